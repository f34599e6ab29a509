"""The processor registry: maps the ``kind`` of a pipeline entry to its settings model and factory.

Built-in kinds come from :mod:`vivavoce.processors.catalog`. Third-party packages add kinds through
the ``vivavoce.processors`` entry-point group (each entry point names a :class:`ProcessorKind`), and a
bot file may also name any ``FrameProcessor`` class directly by dotted path (``kind: pkg.module:Class``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from pipecat.processors.frame_processor import FrameProcessor

    from vivavoce.build_context import BuildContext

Role = Literal["stt", "llm", "tts", "s2s", "processor"]
"""Where a processor sits in a conversation: the builder places the context aggregators around the llm/s2s."""

ENTRY_POINT_GROUP = "vivavoce.processors"


class ProcessorConfig(BaseModel):
    """Base of every pipeline entry's settings; subclasses add the kind's own keys."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="Which processor this is (see `vivavoce list`).")


class CustomProcessorConfig(ProcessorConfig):
    """A ``FrameProcessor`` named by dotted path, ``package.module:ClassName``."""

    kind: str = Field(pattern=r"^[\w.]+:[\w.]+$", description="package.module:ClassName")
    role: Role = Field("processor", description="Its place in the conversation.")
    settings: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the class.")


class UnknownKindError(LookupError):
    """A pipeline entry names a kind nobody registered."""


class MissingDependencyError(ImportError):
    """A processor's implementation cannot be imported; says what to install."""


@dataclass(frozen=True)
class ProcessorKind:
    """One registered kind: its role, its settings model and how to build it.

    ``factory`` is ``"module:function"`` and is imported only when a pipeline is built, so that
    ``vivavoce check``, ``list`` and ``schema`` never load torch or a model.
    """

    name: str
    role: Role
    config: type[ProcessorConfig]
    factory: str
    summary: str
    install: str | None = None
    preload: str | None = None
    hears_input_audio: bool = False
    """Whether its processor uses the caller's audio frames (STT, speech-to-speech, CSM's context)."""

    def create(self, config: ProcessorConfig, context: BuildContext) -> FrameProcessor:
        """Build a processor for one session."""
        return self.load_factory()(config, context)

    def load_factory(self) -> Callable[[Any, BuildContext], FrameProcessor]:
        """Import the factory, turning a missing optional dependency into an install hint."""
        return self._import(self.factory)

    def load_models(self, config: ProcessorConfig) -> None:
        """Load this kind's models into the process-wide store (no-op for hosted services)."""
        if self.preload:
            self._import(self.preload)(config)

    def _import(self, target: str) -> Callable[..., Any]:
        module_name, _, attribute = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            hint = f"; install {self.install}" if self.install else ""
            raise MissingDependencyError(f"processor kind '{self.name}' cannot load ({e}){hint}") from e
        return getattr(module, attribute)


class ProcessorRegistry:
    """Kinds by name. Built-in kinds and entry points are loaded on first use."""

    def __init__(self, kinds: Iterable[ProcessorKind] = (), *, load_plugins: bool = True):
        self._kinds: dict[str, ProcessorKind] = {}
        self._loaded = not load_plugins
        for kind in kinds:
            self.register(kind)

    def register(self, kind: ProcessorKind) -> ProcessorKind:
        """Add a kind; a name can be registered once."""
        existing = self._kinds.get(kind.name)
        if existing is not None and existing != kind:
            raise ValueError(f"processor kind '{kind.name}' is already registered ({existing.factory})")
        self._kinds[kind.name] = kind
        return kind

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        from vivavoce.processors.catalog import BUILTIN_KINDS

        for kind in BUILTIN_KINDS:
            self.register(kind)
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                kind = entry_point.load()
            except Exception as e:  # a broken plugin must not break every other bot
                logger.warning(f"Skipping processor plugin '{entry_point.name}': {e}")
                continue
            if not isinstance(kind, ProcessorKind):
                logger.warning(f"Skipping processor plugin '{entry_point.name}': not a ProcessorKind")
                continue
            self.register(kind)

    def get(self, name: str) -> ProcessorKind:
        """The kind called ``name``; raises :class:`UnknownKindError` listing the known kinds."""
        self._ensure_loaded()
        try:
            return self._kinds[name]
        except KeyError:
            raise UnknownKindError(
                f"unknown processor kind '{name}'; known kinds: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Registered kind names, sorted."""
        self._ensure_loaded()
        return sorted(self._kinds)

    def kinds(self) -> list[ProcessorKind]:
        """Registered kinds, sorted by name."""
        return [self._kinds[name] for name in self.names()]


def resolve_dotted_class(path: str) -> type:
    """Import ``package.module:ClassName`` and check it is a pipecat ``FrameProcessor``."""
    from pipecat.processors.frame_processor import FrameProcessor

    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise UnknownKindError(f"cannot import module '{module_name}': {e}") from e
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UnknownKindError(f"module '{module_name}' has no attribute '{attribute}'")
        target = getattr(target, part)
    if not (isinstance(target, type) and issubclass(target, FrameProcessor)):
        raise UnknownKindError(f"'{path}' is not a pipecat FrameProcessor class")
    return target


registry = ProcessorRegistry()
"""The process-wide registry used by bot files."""
