"""Load a bot file: YAML with positions, ``${ENV}`` interpolation, validation, pipeline-order checks."""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, TypeAdapter, ValidationError

from vivavoce import kinds
from vivavoce.botfile.errors import BotFileError, Problem
from vivavoce.botfile.positions import (
    Path as KeyPath,
    Position,
    PositionedDocument,
    YamlSyntaxError,
    load_positioned_yaml,
)
from vivavoce.botfile.schema import CUSTOM_TAG, BotFileBase, bot_file_model, pipeline_entry, processor_tag
from vivavoce.registry import (
    CustomProcessorConfig,
    ProcessorConfig,
    ProcessorKind,
    ProcessorRegistry,
    Role,
    TransportKind,
    TransportRegistry,
    UnknownKindError,
    resolve_dotted_class,
)

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_FILE_START = Position(1, 1)
_SECRET_NAME = re.compile(r"key|token|secret|password", re.IGNORECASE)


@dataclass
class Stage:
    """One validated pipeline entry with the kind that builds it."""

    index: int
    role: Role
    config: ProcessorConfig
    kind: ProcessorKind | None = None  # None for a dotted-path class
    processor_class: type | None = None  # set for a dotted-path class
    fallback: Stage | None = None  # the entry's ``fallback``: takes over when its workers are gone

    @property
    def hears_input_audio(self) -> bool:
        """Whether its processor uses the caller's audio (a dotted-path class might: assume so)."""
        return self.kind.hears_input_audio if self.kind is not None else True


@dataclass
class Bot:
    """A validated bot file, ready to be built into a pipecat pipeline."""

    path: Path
    spec: BotFileBase
    stages: list[Stage]
    transport: TransportKind
    """The transport kind the bot file names (its settings are ``spec.transport``)."""
    document: PositionedDocument = field(repr=False)

    @property
    def name(self) -> str:
        """The bot's name."""
        return self.spec.name

    def stage(self, role: Role) -> Stage | None:
        """The first stage with this role, if any."""
        return next((s for s in self.stages if s.role == role), None)

    def problem(self, key: KeyPath, message: str) -> BotFileError:
        """An error about ``key`` of this file, found after loading (e.g. while building)."""
        return BotFileError([Problem(self.path, self.document.position_of(key), key, message)])


def _interpolate(value: Any, path: KeyPath, environ: Mapping[str, str], found: set[KeyPath], problems: list):
    if isinstance(value, dict):
        return {k: _interpolate(v, (*path, k), environ, found, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*path, i), environ, found, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        problems.append((path, f"environment variable '{name}' is not set (referenced as ${{{name}}})"))
        return ""

    found.add(path)
    return _ENV_REFERENCE.sub(substitute, value)


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types behind Optional/Union/Annotated/list."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _model_at(root: type[BaseModel], path: KeyPath, data: Any, registry: ProcessorRegistry) -> type | None:
    """The pydantic model that validates the mapping at ``path`` (for listing allowed keys)."""
    candidates: list[type[BaseModel]] = [root]
    for part in path:
        data = data[part] if isinstance(data, (dict, list)) and _has(data, part) else None
        if isinstance(part, int):  # an item of a list: its type is among the candidates already
            continue
        model = _pick_model(candidates, data if isinstance(data, dict) else None, registry, parent=True)
        if model is None or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        candidates = [t for t in _unwrap(annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
        if part == "fallback" and not candidates:  # a mapping validated as a pipeline entry (see _fallbacks)
            candidates = [kind.config for kind in registry.kinds()]
    return _pick_model(candidates, data, registry)


def _has(data: dict | list, part: str | int) -> bool:
    return part in data if isinstance(data, dict) else isinstance(part, int) and 0 <= part < len(data)


def _pick_model(
    models: list[type[BaseModel]], data: Any, registry: ProcessorRegistry, *, parent: bool = False
) -> type[BaseModel] | None:
    """The model among ``models`` that ``data`` (a mapping with a ``kind``) is validated by."""
    if len(models) <= 1 or parent and len(models) == 1:
        return models[0] if models else None
    tag = processor_tag(data) if isinstance(data, dict) else None
    if tag == CUSTOM_TAG:
        return CustomProcessorConfig
    for model in models:
        kind_field = model.model_fields.get("kind")
        if tag is not None and kind_field is not None and tag in typing.get_args(kind_field.annotation):
            return model
    if tag is not None:
        try:
            return registry.get(tag).config
        except UnknownKindError:
            return None
    return None


class _ErrorTranslator:
    """Turns pydantic errors into bot-file problems with a line, a key path and the allowed values."""

    def __init__(
        self,
        file: Path,
        document: PositionedDocument,
        model: type[BaseModel],
        registry: ProcessorRegistry,
        transports: TransportRegistry,
    ):
        self.file, self.document, self.model, self.registry = file, document, model, registry
        self.transports = transports

    def key_path(self, loc: tuple[Any, ...]) -> KeyPath:
        """Drop the union tags pydantic puts in ``loc`` so the path matches the file."""
        path: list[str | int] = []
        current: Any = self.document.data
        for part in loc:
            if isinstance(current, dict) and part not in current and part in (processor_tag(current), CUSTOM_TAG):
                continue
            path.append(part)
            current = current[part] if isinstance(current, (dict, list)) and _has(current, part) else None
        return tuple(path)

    def message(self, error: dict[str, Any], path: KeyPath) -> str:
        kind, given = error["type"], error.get("input")
        # Echo scalars only: a mapping or list may hold secrets (interpolated api keys) further down.
        secret = any(_SECRET_NAME.search(str(p)) for p in path) or isinstance(given, (dict, list))
        quoted = "" if secret else f" (got {given!r})"
        if kind == "extra_forbidden":
            model = _model_at(self.model, path[:-1], self.document.data, self.registry)
            allowed = ", ".join(model.model_fields) if model else "see `vivavoce schema`"
            return f"unknown key '{path[-1]}'; allowed keys: {allowed}"
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            known = ", ".join((self.registry if path[:1] == ("pipeline",) else self.transports).names())
            what = "processor kind" if path[:1] == ("pipeline",) else "transport kind"
            if kind == "union_tag_not_found":
                return f"missing 'kind'; known kinds: {known}"
            extra = " (or package.module:ClassName)" if what == "processor kind" else ""
            given_kind = given.get("kind") if isinstance(given, dict) else given
            return f"unknown {what} {given_kind!r}; known kinds: {known}{extra}"
        if kind == "missing":
            return "required key is missing"
        if kind == "literal_error":
            return f"{error['msg']}{quoted}"
        return f"{error['msg']}{quoted}"

    def problem_at(self, path: KeyPath, message: str) -> Problem:
        """A problem at ``path`` of the file."""
        return Problem(self.file, self.document.position_of(path), path, message)

    def problems(self, error: ValidationError, prefix: KeyPath = ()) -> list[Problem]:
        result = []
        for item in error.errors():
            path = self.key_path((*prefix, *item["loc"]))
            # A missing key has no position of its own: point at the mapping that lacks it.
            result.append(Problem(self.file, self.document.position_of(path), path, self.message(item, path)))
        return result


def _secret_problems(model: BaseModel, data: Any, path: KeyPath, interpolated: set[KeyPath]) -> list:
    """Secrets must come from ``${ENV}``: a literal value in the file is an error."""
    problems = []
    if isinstance(model, CustomProcessorConfig):  # free-form settings: judge secrets by their key names
        raw_settings = data.get("settings") if isinstance(data, dict) else None
        for key in model.settings:
            child = (*path, "settings", key)
            if _SECRET_NAME.search(key) and isinstance(raw_settings, dict) and child not in interpolated:
                problems.append((child, f"secrets are never written in a bot file: use ${{ENV_VAR}} for '{key}'"))
    for name in type(model).model_fields:
        value = getattr(model, name)
        child = (*path, name)
        raw = data.get(name) if isinstance(data, dict) else None
        if isinstance(value, SecretStr) and raw is not None and child not in interpolated:
            problems.append((child, f"secrets are never written in a bot file: use ${{ENV_VAR}} for '{name}'"))
        elif isinstance(value, BaseModel):
            problems += _secret_problems(value, raw, child, interpolated)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    raw_item = raw[i] if isinstance(raw, list) and i < len(raw) else None
                    problems += _secret_problems(item, raw_item, (*child, i), interpolated)
    return problems


def _stages(spec: BotFileBase, registry: ProcessorRegistry) -> tuple[list[Stage], list[tuple[KeyPath, str]]]:
    stages, problems = _stages_of(spec.pipeline, registry, ("pipeline",))  # type: ignore[attr-defined]
    problems += _order_problems(stages)
    return stages, problems


def _stages_of(
    configs: list[ProcessorConfig], registry: ProcessorRegistry, path: KeyPath
) -> tuple[list[Stage], list[tuple[KeyPath, str]]]:
    """The stages of validated entries (``path``: where they are, for a dotted path that does not import)."""
    stages, problems = [], []
    for index, config in enumerate(configs):
        if isinstance(config, CustomProcessorConfig):
            where = (*path, index, "kind") if path == ("pipeline",) else (*path, "kind")
            try:
                cls = resolve_dotted_class(config.kind)
            except UnknownKindError as e:
                problems.append((where, str(e)))
                continue
            stages.append(Stage(index, config.role, config, processor_class=cls))
        else:
            kind = registry.get(config.kind)
            stages.append(Stage(index, kind.role, config, kind=kind))
    return stages, problems


def _fallbacks(
    stages: list[Stage], data: dict, registry: ProcessorRegistry, translator: _ErrorTranslator, interpolated: set
) -> list[Problem]:
    """Validate each entry's ``fallback`` as a pipeline entry of the same role, and attach it to its stage."""
    problems: list[Problem] = []
    adapter = None  # built for the first fallback only: most bot files have none
    for stage in stages:
        raw = getattr(stage.config, "fallback", None)
        if raw is None:
            continue
        adapter = adapter or TypeAdapter(pipeline_entry(registry))
        path: KeyPath = ("pipeline", stage.index, "fallback")
        try:
            config = adapter.validate_python(raw)
        except ValidationError as e:
            problems += translator.problems(e, prefix=path)
            continue
        found = _secret_problems(config, data["pipeline"][stage.index]["fallback"], path, interpolated)
        fallback, kind_problems = _stages_of([config], registry, path)
        if fallback and fallback[0].role != stage.role:
            found.append(((*path, "kind"), f"a fallback does the same job: a {stage.role}, not a {fallback[0].role}"))
        elif fallback and getattr(config, "fallback", None) is not None:
            found.append(((*path, "fallback"), "a fallback has no fallback of its own"))
        elif fallback:
            stage.fallback = fallback[0]
        problems += [translator.problem_at(p, m) for p, m in found + kind_problems]
    return problems


def _order_problems(stages: list[Stage]) -> list[tuple[KeyPath, str]]:
    """A conversation has one llm (or one s2s); STT comes before it and TTS after it."""
    roles = [s.role for s in stages]
    brains = [s for s in stages if s.role in ("llm", "s2s")]
    if not brains:
        return [(("pipeline",), "the pipeline needs an llm or s2s processor (see `vivavoce list`)")]
    if len(brains) > 1:
        return [(("pipeline", brains[1].index, "kind"), "a pipeline has exactly one llm or s2s processor")]
    brain = brains[0]
    problems = []
    for stage in stages:
        if stage.role == "stt" and stage.index > brain.index:
            problems.append(
                (("pipeline", stage.index, "kind"), f"stt '{stage.config.kind}' must come before the {brain.role}")
            )
        if stage.role == "tts" and stage.index < brain.index:
            problems.append(
                (("pipeline", stage.index, "kind"), f"tts '{stage.config.kind}' must come after the {brain.role}")
            )
    for role in ("stt", "tts"):
        if roles.count(role) > 1:
            second = [s for s in stages if s.role == role][1]
            problems.append((("pipeline", second.index, "kind"), f"a pipeline has at most one {role} processor"))
    if brain.role == "llm" and "stt" not in roles:
        problems.append((("pipeline",), "an llm pipeline needs an stt processor before it"))
    if brain.role == "llm" and "tts" not in roles:
        problems.append((("pipeline",), "an llm pipeline needs a tts processor after it"))
    return problems


def load_bot(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    registry: ProcessorRegistry | None = None,
    transports: TransportRegistry | None = None,
) -> Bot:
    """Load and validate a bot file.

    Raises :class:`BotFileError` listing every problem, each with file, line, key path and what is allowed.
    Checks that need a well-formed file (inline secrets, pipeline order) run once the schema is satisfied.
    """
    file = Path(path)
    registry = registry or kinds.processors
    transports = transports or kinds.transports
    environ = os.environ if environ is None else environ
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BotFileError([Problem(file, _FILE_START, (), "no such bot file")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise BotFileError([Problem(file, _FILE_START, (), f"cannot read bot file: {e}")]) from None
    try:
        document = load_positioned_yaml(text)
    except YamlSyntaxError as e:
        raise BotFileError([Problem(file, e.position, (), str(e))]) from None
    if not isinstance(document.data, dict):
        raise BotFileError(
            [Problem(file, _FILE_START, (), "a bot file is a YAML mapping (name, transport, pipeline...)")]
        )

    interpolated: set[KeyPath] = set()
    env_problems: list[tuple[KeyPath, str]] = []
    data = _interpolate(document.data, (), environ, interpolated, env_problems)

    model = bot_file_model(registry, transports)
    translator = _ErrorTranslator(file, document, model, registry, transports)
    try:
        spec = model.model_validate(data)
    except ValidationError as e:
        problems = [Problem(file, document.position_of(p), p, m) for p, m in env_problems]
        raise BotFileError(problems + translator.problems(e)) from None

    found = env_problems + _secret_problems(spec, data, (), interpolated)
    stages, order_problems = _stages(spec, registry)
    found += order_problems
    fallback_problems = _fallbacks(stages, data, registry, translator, interpolated)
    if found or fallback_problems:
        positioned = [Problem(file, document.position_of(p), p, m) for p, m in found]
        raise BotFileError(positioned + fallback_problems)
    return Bot(
        path=file, spec=spec, stages=stages, transport=transports.get(spec.transport.kind), document=document
    )
