"""Starting real worker processes from their own virtualenvs for the tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from vivavoce.testing.processes import free_port, serving

__all__ = ["API_KEY", "REPO", "csm_python", "csm_worker", "free_port", "tiny_csm", "worker_process"]

REPO = Path(__file__).resolve().parents[1]
CSM_PYTHON = REPO / "workers" / "csm" / ".venv" / "bin" / "python"
API_KEY = "test-worker-key"


def csm_python() -> Path:
    """The CSM worker's interpreter; a clear failure (never a skip) when its env was not built."""
    if not CSM_PYTHON.exists():
        pytest.fail("the CSM worker environment is missing: run `make worker-csm` (make test does)")
    return CSM_PYTHON


@contextmanager
def worker_process(args: list[str], *, log: Path, auth: bool = True, env: dict[str, str] | None = None,
                   ready_secs: float = 240.0) -> Iterator[str]:
    """Run ``python args... --port N`` until the block ends; yields ``http://127.0.0.1:N``."""
    port = free_port()
    full_env = {**os.environ, **(env or {}), "VIVAVOCE_WORKER_API_KEY": API_KEY}
    command = [str(csm_python()), *args, "--port", str(port), "--device", "cpu"]
    if not auth:
        command.append("--no-auth")
    url = f"http://127.0.0.1:{port}"
    with serving(command, health=f"{url}/health", env=full_env, cwd=REPO, log=log, ready_secs=ready_secs,
                 stop_secs=20):
        yield url


@pytest.fixture(scope="session")
def tiny_csm(tmp_path_factory) -> Path:
    """A tiny random CSM checkpoint saved from the real classes (once per test session)."""
    out = tmp_path_factory.mktemp("tiny-csm")
    subprocess.run([str(csm_python()), "-m", "vivavoce_csm.tiny", str(out)], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    return out


@pytest.fixture(scope="session")
def csm_worker(tiny_csm, tmp_path_factory) -> Iterator[str]:
    """A CSM worker process (API key required) on the tiny checkpoint."""
    log = tmp_path_factory.mktemp("csm-worker") / "worker.log"
    with worker_process(["-m", "vivavoce_csm", "--model", str(tiny_csm)], log=log) as url:
        yield url
