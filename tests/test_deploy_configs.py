"""Static checks of the deployment files in configs/ (Dockerfiles, docker compose, Kubernetes, nginx).

No container runtime or cluster exists here or on CI, so nothing is built or started: the files are parsed, and
everything they name is checked against the repository: modules, bot files and other paths exist, every flag a
command passes is one its program's own ``--help`` lists (run in the worker's own virtualenv), ports agree between
commands, probes, Services and the proxy, grace periods outlast the drains, secrets are referenced, never
written in.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
COMPOSE_FILE = CONFIGS / "docker-compose.yml"
DOCKER_DIR = CONFIGS / "docker"
K8S_DIR = CONFIGS / "k8s"
NGINX_FILE = CONFIGS / "nginx" / "vivavoce.conf"
SECRET_EXAMPLE = K8S_DIR / "secret.example.yaml"

SECRET_NAMES = {
    "VIVAVOCE_WORKER_API_KEY",
    "VIVAVOCE_STREAM_TOKEN_SECRET",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "HF_TOKEN",
}
"""Environment variables that hold secrets: referenced from a Secret or the environment, never written in."""
GPU_MODULES = {"vivavoce_csm", "vivavoce_moshi"}
"""The worker modules that run on a GPU: they must reserve one."""
REDIS_PORT = 6379
# Top-level folders of the repository: a token starting with one of these in a config file names a repo path.
REPO_PATH = re.compile(r"(?<![\w./$-])((?:bots|workers|src|processors|transports|configs)/[\w./-]*[\w/])")
HEALTH_URL = re.compile(r"https?://(?:127\.0\.0\.1|localhost):(\d+)/health\b")
HELP_TIMEOUT_S = 300  # a cold import of a worker's dependencies on a loaded 2-core machine


# ----------------------------------------------------------------------------------------------- the commands


@dataclass
class Command:
    """One program a config file starts: where it is (for messages) and its argv."""

    where: str
    argv: list[str]
    env: dict[str, object] = field(default_factory=dict)
    """Its environment: compose values (strings), or Kubernetes env entries (dicts with value/valueFrom)."""

    @property
    def kind(self) -> str:
        """``worker`` (``python -m MODULE``), ``agent`` (``vivavoce serve``), ``redis`` or ``unknown``."""
        if len(self.argv) >= 3 and Path(self.argv[0]).name.startswith("python") and self.argv[1] == "-m":
            return "worker"
        if self.argv[:2] == ["vivavoce", "serve"]:
            return "agent"
        if self.argv and self.argv[0] == "redis-server":
            return "redis"
        return "unknown"

    @property
    def module(self) -> str:
        """The module of ``python -m MODULE``."""
        return self.argv[2]

    def flags(self) -> list[str]:
        """Every ``--flag`` passed (``--flag=value`` counts as ``--flag``)."""
        return [a.split("=", 1)[0] for a in self.argv if a.startswith("--")]

    def option(self, flag: str) -> str | None:
        """The value given to ``flag`` (``--flag value`` or ``--flag=value``), None when absent."""
        for i, arg in enumerate(self.argv):
            if arg == flag and i + 1 < len(self.argv):
                return self.argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
        return None

    def port(self) -> int:
        """The port it listens on: ``--port`` is required in every config, so that no default is assumed."""
        value = self.option("--port")
        assert value is not None, f"{self.where}: no --port in {shlex.join(self.argv)}"
        return int(value)


@cache
def compose() -> dict:
    """The compose file, parsed (PyYAML resolves its anchors and ``<<`` merge keys as compose does)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), f"{COMPOSE_FILE}: no services"
    return data


def compose_env(service: dict) -> dict[str, object]:
    """A compose service's ``environment`` as a mapping (compose takes a mapping or a ``KEY=VALUE`` list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def k8s_files() -> list[Path]:
    """Every Kubernetes manifest (kustomization included)."""
    return sorted(K8S_DIR.glob("*.yaml"))


@cache
def k8s_docs() -> tuple[tuple[Path, dict], ...]:
    """Every document of every manifest (multi-document files), with its file."""
    docs = []
    for path in k8s_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return tuple(docs)


def k8s_objects(kind: str) -> dict[str, tuple[Path, dict]]:
    """The objects of ``kind`` by name (the placeholder Secret and the kustomization excluded)."""
    return {
        doc["metadata"]["name"]: (path, doc)
        for path, doc in k8s_docs()
        if doc.get("kind") == kind and path not in (SECRET_EXAMPLE, K8S_DIR / "kustomization.yaml")
    }


def pod_containers(deployment: dict) -> list[dict]:
    """The containers of a Deployment's pod template."""
    return deployment["spec"]["template"]["spec"]["containers"]


def dockerfiles() -> list[Path]:
    """Every Dockerfile under configs/docker."""
    return sorted(DOCKER_DIR.glob("*.Dockerfile"))


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined and comment lines dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    assert not pending, f"{path}: ends inside a continued line"
    return instructions


def exec_form(arguments: str, where: str) -> list[str]:
    """A Dockerfile ``CMD``/``HEALTHCHECK CMD`` in exec form (a JSON list): shell form would hide the argv."""
    try:
        argv = json.loads(arguments)
    except json.JSONDecodeError:
        raise AssertionError(f"{where}: not in exec form (a JSON list): {arguments}") from None
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), f"{where}: {arguments}"
    return argv


def commands() -> list[Command]:
    """Every program the compose file, the Kubernetes Deployments and the Dockerfiles start."""
    found = []
    for name, service in compose()["services"].items():
        argv = service.get("command")
        if argv is not None:
            assert isinstance(argv, list), f"compose service {name}: give command as a list, not a shell string"
            found.append(Command(f"compose service {name}", [str(a) for a in argv], compose_env(service)))
    config_maps = k8s_objects("ConfigMap")
    for name, (path, deployment) in k8s_objects("Deployment").items():
        for container in pod_containers(deployment):
            where = f"{path.name}: Deployment {name}, container {container['name']}"
            assert container.get("command"), f"{where}: give the command too, not only args (no image default assumed)"
            argv = [str(a) for a in container["command"] + (container.get("args") or [])]
            env: dict[str, object] = {}
            for source in container.get("envFrom") or []:
                ref = source.get("configMapRef", {}).get("name")
                assert ref in config_maps, f"{where}: envFrom names no ConfigMap of this set: {source}"
                env |= {key: {"name": key, "value": value} for key, value in config_maps[ref][1]["data"].items()}
            env |= {e["name"]: e for e in container.get("env") or []}
            found.append(Command(where, argv, env))
    for path in dockerfiles():
        for word, rest in dockerfile_instructions(path):
            if word == "CMD":
                found.append(Command(f"{path.name} CMD", exec_form(rest, f"{path.name} CMD")))
    return found


def compose_command(service: str) -> Command | None:
    """The command of a compose service (None: the image's own)."""
    return next((c for c in commands() if c.where == f"compose service {service}"), None)


def k8s_command(deployment: str, container: dict) -> Command:
    """The command of one container of a Deployment."""
    return next(c for c in commands() if c.where.endswith(f"Deployment {deployment}, container {container['name']}"))


def worker_home(module: str) -> Path | None:
    """The package directory of ``python -m module``: ``workers/<family>/<module>`` or ``src/<module>``."""
    relative = module.replace(".", "/")
    for candidate in [*sorted(REPO.glob(f"workers/*/{relative}")), REPO / "src" / relative]:
        if (candidate / "__main__.py").is_file():
            return candidate
    return None


# ------------------------------------------------------------------------------------------- programs' --help

HELP_ENV = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"}
"""Wide and plain: rich (typer's help) cuts long option names to the terminal's width."""


def help_of(command: list[str], cwd: Path) -> str:
    """The ``--help`` text ``command`` prints (it must succeed)."""
    result = subprocess.run(command, cwd=cwd, env=HELP_ENV, capture_output=True, text=True, timeout=HELP_TIMEOUT_S)
    assert result.returncode == 0, f"{' '.join(command[1:])} failed:\n{result.stderr}"
    return result.stdout


@cache
def worker_help(module: str) -> str | None:
    """``python -m module --help`` in its worker's own virtualenv (built by ``make worker-<family>``); None
    when that virtualenv does not exist."""
    home = worker_home(module)
    assert home is not None, f"no package {module} with a __main__.py in workers/*/ or src/"
    family_dir = home.parent
    python = family_dir / ".venv" / "bin" / "python"
    if not python.exists():
        return None
    return help_of([str(python), "-m", module, "--help"], family_dir)


@cache
def serve_help() -> str:
    """``vivavoce serve --help`` from the agent's virtualenv."""
    vivavoce = REPO / ".venv" / "bin" / "vivavoce"
    if not vivavoce.exists():
        pytest.skip("the agent's .venv is missing: `make setup` builds it (`make test` does, before pytest)")
    return help_of([str(vivavoce), "serve", "--help"], REPO)


def lists_flag(help_text: str, flag: str) -> bool:
    """Whether ``flag`` appears in ``help_text`` as a whole option name (``--port`` is not ``--port-range``)."""
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


# --------------------------------------------------------------------------------------------------- parsing


def test_every_yaml_parses():
    """The compose file and every Kubernetes manifest (multi-document) parse, and each object names itself."""
    files = sorted(CONFIGS.rglob("*.yml")) + sorted(CONFIGS.rglob("*.yaml"))
    assert COMPOSE_FILE in files and len(k8s_files()) >= 7, files
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path}: no documents"
        assert all(isinstance(d, dict) for d in docs), f"{path}: a document is not a mapping"
    for path, doc in k8s_docs():
        assert doc.get("apiVersion") and doc.get("kind"), f"{path}: a document without apiVersion or kind"
        if doc["kind"] != "Kustomization":
            assert doc.get("metadata", {}).get("name"), f"{path}: a {doc['kind']} without metadata.name"


def test_kustomization_lists_every_manifest_but_the_placeholder_secret():
    """``kubectl apply -k configs/k8s`` applies every manifest, and never the placeholder Secret (it would
    overwrite the real one)."""
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in k8s_files()} - {"kustomization.yaml", SECRET_EXAMPLE.name}
    assert listed == on_disk, f"kustomization resources {sorted(listed)} != manifests {sorted(on_disk)}"
    images = {image["name"] for image in kustomization.get("images", [])}
    used = {
        c["image"].split(":")[0]
        for _, d in k8s_objects("Deployment").values()
        for c in pod_containers(d)
        if c["image"].startswith("vivavoce/")
    }
    assert used <= images, f"images without an entry in kustomization.yaml (to rename them): {used - images}"


def test_kustomize_builds():
    """kustomize (inside kubectl, no cluster needed) renders the set, when kubectl is installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the manifests are checked by the other tests only")
    result = subprocess.run([kubectl, "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc]
    assert kinds.count("Deployment") == 6 and kinds.count("Service") == 6, kinds


# ------------------------------------------------------------------------------------ commands, flags, paths


def test_every_command_is_known_and_names_what_exists():
    """Each command is a worker module that exists in the repo (``python -m X``: workers/*/X or src/X), the
    agent serving a bot file that exists, or Redis."""
    found = commands()
    assert {c.kind for c in found} >= {"worker", "agent", "redis"}, [c.where for c in found]
    modules = {c.module for c in found if c.kind == "worker"}
    assert modules >= {"vivavoce_asr", "vivavoce_piper", "vivavoce_csm", "vivavoce_moshi"}, modules
    problems = []
    for command in found:
        if command.kind == "unknown":
            problems.append(f"{command.where}: unknown program {shlex.join(command.argv)}")
        elif command.kind == "worker" and worker_home(command.module) is None:
            problems.append(f"{command.where}: no package {command.module} (with __main__.py) in workers/*/ or src/")
        elif command.kind == "agent":
            bot = command.argv[2] if len(command.argv) > 2 else ""
            if bot.startswith("-") or not (REPO / bot).is_file():
                problems.append(f"{command.where}: the bot file {bot!r} does not exist in the repository")
    assert not problems, "\n".join(problems)


def test_every_worker_flag_is_one_its_parser_accepts():
    """Each ``--flag`` passed to a worker is listed by that worker's ``--help`` (run in its own virtualenv)."""
    problems, missing = [], set()
    for command in commands():
        if command.kind != "worker":
            continue
        help_text = worker_help(command.module)
        if help_text is None:
            missing.add(worker_home(command.module).parent.name)
            continue
        problems += [
            f"{command.where}: {command.module} has no {flag}"
            for flag in command.flags()
            if not lists_flag(help_text, flag)
        ]
    assert not problems, "\n".join(problems)
    if missing:
        # The workers whose virtualenv exists were checked above; these could not be.
        pytest.skip(
            f"no workers/<family>/.venv for {sorted(missing)}, so their flags are unchecked: "
            f"`make {' '.join(f'worker-{family}' for family in sorted(missing))}` builds them "
            "(`make test` does, before pytest)"
        )


def test_every_agent_flag_is_one_vivavoce_serve_accepts():
    """Each ``--flag`` passed to ``vivavoce serve`` is listed by ``vivavoce serve --help``."""
    help_text = serve_help()
    problems = [
        f"{command.where}: vivavoce serve has no {flag}"
        for command in commands()
        if command.kind == "agent"
        for flag in command.flags()
        if not lists_flag(help_text, flag)
    ]
    assert not problems, "\n".join(problems)


def repo_paths(text: str) -> set[str]:
    """The repository paths named in ``text`` (bots/..., workers/..., configs/...)."""
    return {m.group(1).rstrip("/") for m in REPO_PATH.finditer(text)}


USER_FILES = {"configs/.env": "configs/.env.example"}
"""Files the user creates from a template in the repository (secrets: never committed)."""


def test_every_repo_path_named_exists():
    """Every repository path a config file names (bot files, worker folders, requirements, Dockerfiles, the
    README) exists; a file the user makes (configs/.env) has its template, and git ignores the made one."""
    files = [COMPOSE_FILE, *k8s_files(), *dockerfiles(), NGINX_FILE]
    problems = [
        f"{path.relative_to(REPO)} names {name}, which does not exist"
        for path in files
        for name in sorted(repo_paths(path.read_text()))
        if not (REPO / USER_FILES.get(name, name)).exists()
    ]
    assert not problems, "\n".join(problems)
    ignored = (CONFIGS / ".gitignore").read_text().split()
    assert ".env" in ignored, "configs/.gitignore must keep configs/.env (secrets) out of git"


def test_compose_builds_name_existing_dockerfiles_with_their_ignore_files():
    """Each ``build:`` names a context and a Dockerfile that exist; each Dockerfile has the ignore file BuildKit
    reads beside it (``<name>.dockerignore``), which keeps the gigabytes of virtualenvs out of the context."""
    built = set()
    for name, service in compose()["services"].items():
        build = service.get("build")
        if build is None:
            continue
        context = (COMPOSE_FILE.parent / build["context"]).resolve()
        dockerfile = context / build["dockerfile"]
        assert context == REPO, f"compose service {name}: the build context must be the repository root"
        assert dockerfile.is_file(), f"compose service {name}: {dockerfile} does not exist"
        built.add(dockerfile)
    assert built == set(dockerfiles()), f"Dockerfiles no service builds: {set(dockerfiles()) - built}"
    for path in dockerfiles():
        ignore = path.with_name(path.name + ".dockerignore")
        assert ignore.is_file(), f"{ignore.name} is missing"
        patterns = {line.strip() for line in ignore.read_text().splitlines()}
        assert "**/.venv" in patterns, f"{ignore.name} does not exclude the virtualenvs (**/.venv)"


def requires_python(pyproject: Path) -> tuple[int, int]:
    """The lowest Python a pyproject.toml accepts (its ``requires-python = ">=X.Y"``)."""
    spec = tomllib.loads(pyproject.read_text())["project"]["requires-python"]
    major, minor = re.search(r">=\s*(\d+)\.(\d+)", spec).groups()
    return int(major), int(minor)


def test_dockerfiles_copy_what_exists_and_install_as_the_makefile_does():
    """COPY sources exist (the context is the repo root); a worker's image installs what its ``make worker-X``
    target installs (every pinned package, its requirements.txt from its own folder, which installs ../common);
    torch is pinned as the Makefile pins it; the Python version satisfies every requires-python."""
    makefile = (REPO / "Makefile").read_text()
    torch_pin = re.search(r'"(torch==[\w.]+)"', makefile).group(1)
    python_floor = max(requires_python(p) for p in [REPO / "pyproject.toml", *REPO.glob("workers/*/pyproject.toml")])
    for path in dockerfiles():
        text = path.read_text()
        instructions = dockerfile_instructions(path)
        version = re.search(r"ARG PYTHON_VERSION=(\d+)\.(\d+)", text)
        below = f"{path.name}: Python below {python_floor}, which a pyproject.toml requires"
        assert version and tuple(map(int, version.groups())) >= python_floor, below
        for word, rest in instructions:
            if word == "COPY" and not rest.startswith("--from"):
                sources = [s for s in rest.split() if not s.startswith("--")][:-1]
                for source in sources:
                    assert (REPO / source).exists(), f"{path.name}: COPY {source}: not in the repository"
        runs = " ".join(rest for word, rest in instructions if word == "RUN")
        family = path.name.removesuffix(".Dockerfile")
        if family == "agent":
            assert torch_pin in runs, f"{path.name}: torch is not pinned as the Makefile pins it ({torch_pin})"
            extras = re.search(r"ARG VIVAVOCE_EXTRAS=([\w,]+)", text).group(1).split(",")
            known = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
            assert set(extras) <= set(known), f"{path.name}: unknown extras {set(extras) - set(known)}"
            assert {"twilio", "webrtc", "fleet"} <= set(extras), f"{path.name}: `vivavoce serve` needs these extras"
            # `pip install ".[...]"` in the WORKDIR builds the package from what was copied there: pyproject.toml
            # and every folder its package-dir maps.
            workdir = PurePosixPath([rest for word, rest in instructions if word == "WORKDIR"][-1])
            package_dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
            for needed in ["pyproject.toml", *package_dirs.values()]:
                assert in_repo(image_to_repo(path), workdir / needed), f"{path.name}: {needed} is not copied"
            continue
        target = re.search(rf"^workers/{family}/\.venv/\.setup-done:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
        assert target, f"{path.name}: no `make worker-{family}` recipe to follow in the Makefile"
        pins = re.findall(r'"([\w.-]+==[\w.]+)"', target.group(1))
        missing = [pin for pin in pins if pin not in runs]
        assert not missing, f"{path.name}: installs none of {missing}, which `make worker-{family}` installs"
        assert f"workers/{family}/requirements.txt" in installed_requirements(path), (
            f"{path.name}: does not install workers/{family}/requirements.txt"
        )


def image_to_repo(path: Path) -> dict[PurePosixPath, Path]:
    """Where each COPY puts a repository path in the image: image path -> repo path."""
    copies = {}
    workdir = PurePosixPath("/")
    for word, rest in dockerfile_instructions(path):
        if word == "WORKDIR":
            workdir = workdir / rest
        if word == "COPY" and not rest.startswith("--from"):
            *sources, dest = [s for s in rest.split() if not s.startswith("--")]
            base = PurePosixPath(os.path.normpath(workdir / dest))  # a relative dest is under the WORKDIR
            for source in sources:
                copies[base / Path(source).name if dest.endswith("/") else base] = REPO / source
    return copies


def in_repo(copies: dict[PurePosixPath, Path], image_path: PurePosixPath) -> Path | None:
    """The repo path an image path was copied from (None: no COPY put it there)."""
    for target, source in copies.items():
        if image_path == target or target in image_path.parents:
            return source / image_path.relative_to(target)
    return None


def installed_requirements(path: Path) -> list[str]:
    """The requirements files a Dockerfile's RUNs install (``pip install -r FILE`` in the WORKDIR of the time),
    as repo paths; each must have been copied into the image, and so must every ``-e DIR`` it installs (the
    workers' requirements install ../common and . by relative path)."""
    copies = image_to_repo(path)
    workdir = PurePosixPath("/")
    found = []
    for word, rest in dockerfile_instructions(path):
        if word == "WORKDIR":
            workdir = workdir / rest
        if word != "RUN":
            continue
        for name in re.findall(r"(?:^|\s)-r\s+(\S+)", rest):
            image_file = PurePosixPath(os.path.normpath(workdir / name))
            repo_file = in_repo(copies, image_file)
            assert repo_file and repo_file.is_file(), f"{path.name}: -r {name} in {workdir}: not copied from the repo"
            found.append(str(repo_file.relative_to(REPO)))
            for line in repo_file.read_text().splitlines():
                if line.startswith("-e "):
                    image_dir = PurePosixPath(os.path.normpath(image_file.parent / line[3:].strip()))
                    repo_dir = in_repo(copies, image_dir)
                    assert repo_dir and (repo_dir / "pyproject.toml").is_file(), (
                        f"{path.name}: {repo_file.relative_to(REPO)} installs {line[3:]} ({image_dir}), "
                        "which no COPY put in the image"
                    )
    return found


# --------------------------------------------------------------------------------------------------- ports


def health_port(argv: list[str], where: str) -> int:
    """The port of the /health URL a healthcheck command fetches."""
    match = HEALTH_URL.search(" ".join(argv))
    assert match, f"{where}: the healthcheck does not fetch http://127.0.0.1:PORT/health: {argv}"
    return int(match.group(1))


def expected_route(command: Command) -> str:
    """The path of a worker's advertised URL, which must be a WebSocket route that worker serves: one its own
    package declares (the ASR service: /v1/asr, Moshi: /api/chat), or, for the workers served by the common
    server (``run_worker``: the TTS workers), one that server declares (/v1/stream)."""
    url = command.option("--advertise-url")
    path = urlsplit(url).path
    sources = list(worker_home(command.module).rglob("*.py"))
    if any("run_worker" in source.read_text() for source in sources):
        sources.append(REPO / "workers" / "common" / "vivavoce_worker" / "server.py")
    declared = any(f'websocket("{path}")' in source.read_text() for source in sources)
    assert declared, f"{command.where}: --advertise-url {url}: {command.module} serves no WebSocket at {path}"
    return path


def test_compose_ports_agree():
    """In each compose service: the healthcheck probes the port the command listens on, a published port maps
    to it, and a worker advertises its own service name, that port and a route it serves."""
    services = compose()["services"]
    problems = []
    for name, service in services.items():
        command = compose_command(name)
        test = (service.get("healthcheck") or {}).get("test")
        assert test, f"compose service {name}: no healthcheck"
        if command is None or command.kind == "redis":
            continue
        port = command.port()
        if health_port(test, name) != port:
            problems.append(f"{name}: healthcheck probes {health_port(test, name)}, the command listens on {port}")
        for published in service.get("ports") or []:
            container_port = int(str(published).split(":")[-1].split("/")[0])
            if container_port != port:
                problems.append(f"{name}: publishes container port {container_port}, the command listens on {port}")
        if command.kind == "worker":
            url = command.option("--advertise-url")
            assert url, f"{name}: no --advertise-url (the default is the container's own hostname)"
            parts = urlsplit(url)
            if (parts.scheme, parts.hostname, parts.port) != ("ws", name, port):
                problems.append(f"{name}: advertises {url}, not ws://{name}:{port}/...")
            expected_route(command)
    assert not problems, "\n".join(problems)


def container_port(container: dict, port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    named = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
    assert port in named, f"container {container['name']}: no port named {port!r}"
    return named[port]


def test_k8s_ports_agree():
    """In each Deployment: the container port, every HTTP probe and the Service's target are the port the
    command listens on; a worker advertises its pod IP (downward API), that port and a route it serves."""
    services = k8s_objects("Service")
    problems = []
    for name, (path, deployment) in k8s_objects("Deployment").items():
        for container in pod_containers(deployment):
            command = k8s_command(name, container)
            if command.kind == "redis":
                continue
            port = command.port()
            declared = {p["containerPort"] for p in container.get("ports") or []}
            if declared != {port}:
                problems.append(f"{path.name}: containerPort {declared}, the command listens on {port}")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                spec = container.get(probe)
                if probe != "startupProbe" and spec is None:
                    problems.append(f"{path.name}: {name} has no {probe}")
                if spec is None:
                    continue
                get = spec.get("httpGet") or {}
                if get.get("path") != "/health" or container_port(container, get.get("port")) != port:
                    problems.append(f"{path.name}: {name}'s {probe} is not GET /health on {port}: {get}")
            service_path, service = services.get(name, (None, None))
            assert service is not None, f"{path.name}: Deployment {name} has no Service of the same name"
            for entry in service["spec"]["ports"]:
                if container_port(container, entry.get("targetPort", entry["port"])) != port:
                    problems.append(f"{service_path.name}: Service {name} targets {entry}, not {port}")
            if command.kind == "worker":
                url = command.option("--advertise-url") or ""
                parts = urlsplit(url)
                if parts.hostname != "$(pod_ip)" or parts.port != port:
                    problems.append(f"{path.name}: {name} advertises {url!r}, not ws://$(POD_IP):{port}/...")
                pod_ip = command.env.get("POD_IP") or {}
                if pod_ip.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "status.podIP":
                    problems.append(f"{path.name}: {name}'s POD_IP is not the downward API's status.podIP")
                expected_route(command)
    assert not problems, "\n".join(problems)


def test_dockerfile_healthchecks_and_ports_agree():
    """Each Dockerfile's HEALTHCHECK probes /health on the port its CMD listens on, and EXPOSEs that port."""
    for path in dockerfiles():
        instructions = dockerfile_instructions(path)
        command = next(c for c in commands() if c.where == f"{path.name} CMD")
        healthchecks = [rest for word, rest in instructions if word == "HEALTHCHECK"]
        assert len(healthchecks) == 1, f"{path.name}: {len(healthchecks)} HEALTHCHECK instructions"
        argv = exec_form(healthchecks[0].split(" CMD ", 1)[-1], f"{path.name} HEALTHCHECK")
        assert health_port(argv, path.name) == command.port(), f"{path.name}: HEALTHCHECK probes another port"
        exposed = {int(p.split("/")[0]) for word, rest in instructions if word == "EXPOSE" for p in rest.split()}
        assert exposed == {command.port()}, f"{path.name}: EXPOSE {exposed}, CMD listens on {command.port()}"


# ------------------------------------------------------------------------------------- drains, GPUs, secrets


def seconds(duration: str | int | float) -> float:
    """A compose duration (``40s``, ``1m30s``, ``1h``) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a compose duration: {duration!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


def drain_secs(command: Command) -> float:
    """``--drain-secs``, which every worker in a config must give (the default would hide what the grace
    period has to outlast)."""
    value = command.option("--drain-secs")
    assert value is not None, f"{command.where}: no --drain-secs"
    return float(value)


def test_compose_stop_grace_outlasts_the_drain():
    """compose's SIGKILL comes after ``stop_grace_period`` (default 10 s): it must outlast ``--drain-secs``,
    which starts at SIGTERM, or a worker is killed mid-sentence."""
    problems = []
    for name, service in compose()["services"].items():
        command = compose_command(name)
        if command is None or command.kind != "worker":
            continue
        grace = seconds(service.get("stop_grace_period", "10s"))
        if grace <= drain_secs(command):
            problems.append(f"{name}: stop_grace_period {grace:g} s <= --drain-secs {drain_secs(command):g}")
    assert not problems, "\n".join(problems)


def prestop_sleep(container: dict, where: str) -> float:
    """The seconds a container's preStop hook sleeps (an ``exec`` of ``sleep N``, or the native sleep action)."""
    hook = container.get("lifecycle", {}).get("preStop")
    assert hook, f"{where}: no preStop hook"
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    argv = hook.get("exec", {}).get("command") or []
    assert len(argv) == 2 and Path(argv[0]).name == "sleep", f"{where}: preStop is not a short sleep: {hook}"
    return float(argv[1])


def test_k8s_grace_period_outlasts_prestop_and_drain():
    """The kubelet's SIGKILL comes ``terminationGracePeriodSeconds`` after the pod starts terminating: preStop's
    sleep, then SIGTERM and the worker's drain (``--drain-secs``), must both fit before it."""
    problems = []
    for name, (path, deployment) in k8s_objects("Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        grace = pod.get("terminationGracePeriodSeconds", 30)
        for container in pod_containers(deployment):
            command = k8s_command(name, container)
            if command.kind == "redis":
                continue
            sleep = prestop_sleep(container, f"{path.name}: {name}")
            if not 0 < sleep <= 15:
                problems.append(f"{path.name}: {name}'s preStop sleeps {sleep:g} s (a few seconds is what it is for)")
            drain = drain_secs(command) if command.kind == "worker" else 0.0
            if grace <= sleep + drain:
                problems.append(f"{path.name}: {name}: grace {grace} s <= preStop {sleep:g} s + drain {drain:g} s")
    assert not problems, "\n".join(problems)


def test_gpu_workers_reserve_a_gpu_and_cpu_workers_do_not():
    """CSM and Moshi reserve an NVIDIA GPU (compose: a device reservation; Kubernetes: an nvidia.com/gpu limit)
    and run with --device cuda; the CPU services reserve none."""
    problems = []
    for name, service in compose()["services"].items():
        command = compose_command(name)
        devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices")
        gpu = bool(command and command.kind == "worker" and command.module in GPU_MODULES)
        nvidia = bool(devices) and all(
            d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices
        )
        if gpu != nvidia:
            problems.append(f"compose service {name}: GPU worker {gpu}, NVIDIA reservation {devices}")
        if gpu and command.option("--device") != "cuda":
            problems.append(f"compose service {name}: a GPU worker without --device cuda")
    for name, (path, deployment) in k8s_objects("Deployment").items():
        for container in pod_containers(deployment):
            command = k8s_command(name, container)
            gpus = int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
            gpu = command.kind == "worker" and command.module in GPU_MODULES
            if gpu != (gpus >= 1):
                problems.append(f"{path.name}: {name}: GPU worker {gpu}, nvidia.com/gpu limit {gpus}")
            if gpu and command.option("--device") != "cuda":
                problems.append(f"{path.name}: {name}: a GPU worker without --device cuda")
    assert not problems, "\n".join(problems)


def secret_keys() -> set[str]:
    """The keys of the placeholder Secret."""
    docs = [d for d in yaml.safe_load_all(SECRET_EXAMPLE.read_text()) if d]
    assert len(docs) == 1 and docs[0]["kind"] == "Secret", f"{SECRET_EXAMPLE}: one Secret expected"
    values = docs[0].get("stringData") or {}
    assert all(v == "REPLACE_ME" for v in values.values()), f"{SECRET_EXAMPLE}: only placeholders belong there"
    return set(values)


def test_secrets_are_referenced_never_written_in():
    """Kubernetes: every secret variable comes from the vivavoce-secrets Secret (a key the placeholder lists);
    compose: from the environment (``${NAME...}``). Every worker that needs a key gets one, every agent the
    shared stream-token secret."""
    keys = secret_keys()
    assert keys >= SECRET_NAMES, f"{SECRET_EXAMPLE}: missing {SECRET_NAMES - keys}"
    problems = []
    for command in commands():
        if command.where.endswith(" CMD") or command.kind == "redis":
            continue  # Dockerfiles carry no environment of their own
        for name, value in command.env.items():
            if name not in SECRET_NAMES:
                continue
            if isinstance(value, dict):  # Kubernetes
                ref = value.get("valueFrom", {}).get("secretKeyRef", {})
                if "value" in value or ref.get("name") != "vivavoce-secrets" or ref.get("key") not in keys:
                    problems.append(f"{command.where}: {name} is not a reference to vivavoce-secrets: {value}")
            elif not re.fullmatch(rf"\$\{{{name}(?::?[-?][^}}]*)?\}}", str(value)):
                problems.append(f"{command.where}: {name} is written in, not taken from the environment")
        needed = {"worker": {"VIVAVOCE_WORKER_API_KEY"}, "agent": {"VIVAVOCE_STREAM_TOKEN_SECRET"}}.get(command.kind)
        if command.kind == "worker" and "--no-auth" in command.argv:
            needed = set()
        for name in sorted((needed or set()) - set(command.env)):
            problems.append(f"{command.where}: no {name} in its environment")
    for name, (path, config_map) in k8s_objects("ConfigMap").items():
        leaked = SECRET_NAMES & set(config_map.get("data") or {})
        if leaked:
            problems.append(f"{path.name}: ConfigMap {name} holds {leaked}: they belong in the Secret")
    assert not problems, "\n".join(problems)


def test_registry_urls_point_at_the_redis_service():
    """Every registry URL (a worker's --registry, an agent's --registry or VIVAVOCE_REGISTRY) names the Redis
    of its own deployment: compose's redis service, or the redis Service on Redis's port."""
    compose_services = compose()["services"]
    k8s_services = k8s_objects("Service")
    problems = []
    for command in commands():
        if command.where.endswith(" CMD") or command.kind == "redis":
            continue
        env_value = command.env.get("VIVAVOCE_REGISTRY")
        urls = [command.option("--registry"), env_value.get("value") if isinstance(env_value, dict) else env_value]
        urls = [u for u in urls if u]
        if command.kind in ("worker", "agent") and not urls:
            problems.append(f"{command.where}: no registry")
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme != "redis" or parts.port != REDIS_PORT:
                problems.append(f"{command.where}: registry {url} is not redis://HOST:{REDIS_PORT}/N")
            if command.where.startswith("compose"):
                image = compose_services.get(parts.hostname, {}).get("image", "")
                if not image.startswith("redis:"):
                    problems.append(f"{command.where}: registry host {parts.hostname} is not a redis service")
            else:
                _, service = k8s_services.get(parts.hostname, (None, None))
                ports = {p["port"] for p in service["spec"]["ports"]} if service else set()
                if REDIS_PORT not in ports or service["spec"]["selector"].get("app.kubernetes.io/name") != "redis":
                    problems.append(f"{command.where}: registry host {parts.hostname} is not the redis Service")
    assert not problems, "\n".join(problems)


def test_k8s_selectors_match_their_pods():
    """Each Deployment selects its own pod template, and each Service selects a Deployment's pods."""
    deployments = k8s_objects("Deployment")
    problems = []
    for name, (path, deployment) in deployments.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if not selector.items() <= labels.items():
            problems.append(f"{path.name}: Deployment {name} selects {selector}, its pods are {labels}")
    for name, (path, service) in k8s_objects("Service").items():
        selector = service["spec"]["selector"].items()
        if not any(selector <= d["spec"]["template"]["metadata"]["labels"].items() for _, d in deployments.values()):
            problems.append(f"{path.name}: Service {name} selects no Deployment's pods")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------------------------------- nginx


@dataclass
class Directive:
    """One nginx directive: its words, and its block's directives when it has one."""

    words: list[str]
    block: list[Directive] | None = None

    def find(self, name: str) -> list[Directive]:
        """The directives named ``name`` in this block (not nested deeper)."""
        return [d for d in self.block or [] if d.words[0] == name]


NGINX_TOKEN = re.compile(r"""'[^']*'|"[^"]*"|[{};]|[^\s{};'"]+""")


def parse_nginx(text: str) -> Directive:
    """nginx's configuration syntax: words end in ``;`` or open a ``{`` block; ``#`` starts a comment outside
    quotes. Raises AssertionError on an unbalanced brace or an unterminated directive."""
    lines = []
    for line in text.splitlines():
        # Drop a comment: a '#' outside quotes (nginx variables never contain '#').
        tokens = NGINX_TOKEN.findall(line)
        kept = []
        for token in tokens:
            if token.startswith("#"):
                break
            kept.append(token)
        lines.append(kept)
    root = Directive(["(root)"], [])
    stack = [root]
    words: list[str] = []
    for line_number, tokens in enumerate(lines, 1):
        for token in tokens:
            if token == ";":
                assert words, f"nginx line {line_number}: an empty directive"
                stack[-1].block.append(Directive(words))
                words = []
            elif token == "{":
                assert words, f"nginx line {line_number}: a block without a directive"
                block = Directive(words, [])
                stack[-1].block.append(block)
                stack.append(block)
                words = []
            elif token == "}":
                assert not words, f"nginx line {line_number}: {' '.join(words)} is not ended with ';'"
                assert len(stack) > 1, f"nginx line {line_number}: '}}' closes no block"
                stack.pop()
            else:
                words.append(token.strip("'\"") if token[0] in "'\"" else token)
    assert not words, f"nginx: {' '.join(words)} is not ended with ';'"
    assert len(stack) == 1, f"nginx: {len(stack) - 1} block(s) left open ({stack[-1].words})"
    return root


def agent_routes() -> dict[str, str]:
    """The agent's HTTP and WebSocket routes, read from its transports' code: path -> transport."""
    routes = {}
    for transport in ("twilio", "webrtc"):
        source = (REPO / "transports" / f"{transport}_server.py").read_text()
        for path in re.findall(r'add_api(?:_websocket)?_route\(\s*"([^"]+)"', source):
            routes[path] = transport
    assert {"/twilio/voice", "/twilio/ws", "/api/offer"} <= set(routes), routes
    return routes


def nginx_location(server: Directive, path: str) -> Directive | None:
    """The location nginx picks for ``path`` (exact match first, then the longest prefix; no regexes)."""
    best = None
    for location in server.find("location"):
        modifier, *rest = location.words[1:]
        if modifier == "=" and rest[0] == path:
            return location
        prefix = rest[0] if modifier == "^~" else modifier
        if modifier not in ("=", "~", "~*") and path.startswith(prefix):
            if best is None or len(prefix) > len(best.words[-1]):
                best = location
    return best


def nginx_seconds(value: str) -> float:
    """An nginx time (``3600s``, ``1h``, ``90``) in seconds."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value)
    assert match, f"not an nginx time: {value}"
    return int(match.group(1)) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}[match.group(2)]


def test_nginx_config():
    """The nginx example parses (balanced braces, every directive ended), its upstreams point at the agent's
    port, every agent route has a location that proxies to a defined upstream, WebRTC signalling goes to a
    sticky upstream, and the media-stream WebSocket is upgraded and kept open for a whole call."""
    root = parse_nginx(NGINX_FILE.read_text())
    agent = next(c for c in commands() if c.where == "compose service agent")
    upstreams = {u.words[1]: u for u in root.find("upstream")}
    assert upstreams, "no upstream"
    problems = []
    for name, upstream in upstreams.items():
        for server in upstream.find("server"):
            port = urlsplit(f"//{server.words[1]}").port
            if port != agent.port():
                problems.append(f"upstream {name}: {server.words[1]} is not on the agent's port {agent.port()}")
    sticky = {
        name
        for name, u in upstreams.items()
        if u.find("ip_hash") or any("consistent" in d.words for d in u.find("hash"))
    }
    servers = [s for s in root.find("server") if s.find("location")]
    assert len(servers) == 1, "one server block with locations expected"
    server = servers[0]
    upgrade = {d.words[1]: d.words[2] for d in server.find("proxy_set_header")}
    for path, transport in agent_routes().items():
        location = nginx_location(server, re.sub(r"\{\w+\}", "x", path))
        passes = location.find("proxy_pass") if location else []
        if not passes:
            problems.append(f"{path} ({transport}): no location proxies it")
            continue
        upstream = urlsplit(passes[0].words[1]).hostname
        if upstream not in upstreams:
            problems.append(f"{path}: proxy_pass to {passes[0].words[1]}, not a defined upstream")
        elif transport == "webrtc" and path == "/api/offer" and upstream not in sticky:
            problems.append(f"{path}: one peer's POST and PATCH must reach one host, but {upstream} is not sticky")
        elif transport == "twilio" and upstream in sticky:
            problems.append(f"{path}: Twilio's requests may reach any host; {upstream} pins them by client")
    if upgrade.get("Upgrade") != "$http_upgrade" or upgrade.get("Connection") != "$connection_upgrade":
        problems.append(f"the server block does not pass the WebSocket upgrade: {upgrade}")
    maps = {m.words[2]: m for m in root.find("map")}
    if "$connection_upgrade" not in maps:
        problems.append("no map defines $connection_upgrade")
    if server.find("proxy_http_version")[0].words[1:] != ["1.1"]:
        problems.append("WebSockets through nginx need proxy_http_version 1.1")
    media = nginx_location(server, "/twilio/ws")
    timeouts = media.find("proxy_read_timeout") if media else []
    if not timeouts or nginx_seconds(timeouts[0].words[1]) < 3600:
        problems.append("/twilio/ws: proxy_read_timeout under an hour would hang up on a caller who talks at length")
    assert not problems, "\n".join(problems)


def test_nginx_accepts_the_config(tmp_path: Path):
    """``nginx -t`` on the example, when an nginx binary is installed (it is not by default): inside a minimal
    nginx.conf of its own, with a throwaway certificate in place of the example's paths."""
    nginx, openssl = shutil.which("nginx"), shutil.which("openssl")
    if nginx is None or openssl is None:
        pytest.skip("nginx (or openssl) is not installed: the config is checked by test_nginx_config only")
    key, cert = tmp_path / "tls.key", tmp_path / "tls.crt"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=voice.example.com"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    site = NGINX_FILE.read_text()
    for directive, path in (("ssl_certificate_key", key), ("ssl_certificate", cert)):
        site = re.sub(rf"^(\s*{directive})\s+\S+;", rf"\1 {path};", site, flags=re.MULTILINE)
    (tmp_path / "vivavoce.conf").write_text(site)
    temp = {name: tmp_path / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    main = "\n".join(
        [
            f"error_log {tmp_path / 'error.log'};",
            f"pid {tmp_path / 'nginx.pid'};",
            "events {}",
            "http {",
            f"    access_log {tmp_path / 'access.log'};",
            *(f"    {name}_temp_path {path};" for name, path in temp.items()),
            f"    include {tmp_path / 'vivavoce.conf'};",
            "}",
        ]
    )
    (tmp_path / "nginx.conf").write_text(main + "\n")
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
