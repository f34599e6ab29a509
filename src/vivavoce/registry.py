"""Kind registries: the ``kind`` of a pipeline entry or of the transport -> its settings model and factory.

Built-in kinds are listed in :mod:`vivavoce.processors.catalog` and :mod:`vivavoce.transports.catalog` and
registered in :mod:`vivavoce.kinds`, the process-wide registries. Third-party packages add kinds through the
``vivavoce.processors`` and ``vivavoce.transports`` entry-point groups (each entry point names a
:class:`ProcessorKind` or a :class:`TransportKind`), and a bot file may also name any ``FrameProcessor``
class directly by dotted path (``kind: pkg.module:Class``).

Factories are ``"module:function"`` strings, imported only when a session is built or run, so that
``vivavoce check``, ``list`` and ``schema`` never load torch, a model or a transport's dependencies.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from pipecat.processors.frame_processor import FrameProcessor

    from vivavoce.build_context import BuildContext

Role = Literal["stt", "llm", "tts", "s2s", "processor"]
"""Where a processor sits in a conversation: the builder places the context aggregators around the llm/s2s.

``llm`` needs an ``stt`` before it and a ``tts`` after it; ``s2s`` answers each user turn with audio of its
own (a speech-to-speech model such as Moshi, or a recorded reply) and needs neither.
"""

PROCESSOR_ENTRY_POINTS = "vivavoce.processors"
TRANSPORT_ENTRY_POINTS = "vivavoce.transports"


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
        return import_target(target, f"processor kind '{self.name}'", self.install)


def import_target(target: str, what: str, install: str | None) -> Callable[..., Any]:
    """Import ``"module:attribute"``, turning a missing module into an install hint for ``what``."""
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        hint = f"; install {install}" if install else ""
        raise MissingDependencyError(f"{what} cannot load ({e}){hint}") from e
    return getattr(module, attribute)


class TransportConfig(BaseModel):
    """Base of every transport section's settings; subclasses add the kind's own keys."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="How audio reaches the bot (see `vivavoce list`).")


@dataclass(frozen=True)
class TransportKind:
    """One registered transport: its settings model and how a session of it runs.

    ``run`` (``vivavoce run``) is ``"module:function"``, an ``async (bot) -> list[Turn]`` that connects and
    talks until the session ends. ``serve`` (``vivavoce serve``) is ``"module:function"``, a
    ``(app, context: vivavoce.server.ServeContext) -> None`` that adds the transport's routes to the app.
    ``check`` (optional, ``(config) -> None``) runs before the models load and raises
    :class:`TransportUnavailableError` when the session could not start (no sound device...).
    """

    name: str
    config: type[TransportConfig]
    summary: str
    run: str | None = None
    serve: str | None = None
    check: str | None = None
    install: str | None = None
    ready: str = "is listening"
    """What ``vivavoce run`` says once the models are loaded ("<bot> is listening")."""

    @property
    def role(self) -> str:
        """Shown by ``vivavoce list`` beside the processor kinds' roles."""
        return "transport"

    def load(self, what: Literal["run", "serve", "check"]) -> Callable[..., Any]:
        """Import this kind's ``run``, ``serve`` or ``check`` function."""
        target = getattr(self, what)
        if target is None:
            raise TransportUnavailableError(f"transport '{self.name}' has no '{what}'")
        return import_target(target, f"transport kind '{self.name}'", self.install)


class TransportUnavailableError(RuntimeError):
    """A transport cannot run here, or cannot run this way; the message says why and what to do."""


K = TypeVar("K", ProcessorKind, TransportKind)


class KindRegistry(Generic[K]):
    """Kinds by name: the ones given, then the plugins of ``group``, loaded on first use."""

    def __init__(
        self, what: str, kind_type: type[K], group: str, kinds: Iterable[K] = (), *, load_plugins: bool = True
    ):
        """``what`` names the kinds in messages ("processor", "transport")."""
        self._what, self._kind_type, self._group = what, kind_type, group
        self._kinds: dict[str, K] = {}
        self._loaded = not load_plugins
        for kind in kinds:
            self.register(kind)

    def register(self, kind: K) -> K:
        """Add a kind; a name can be registered once."""
        existing = self._kinds.get(kind.name)
        if existing is not None and existing != kind:
            raise ValueError(f"{self._what} kind '{kind.name}' is already registered ({existing})")
        self._kinds[kind.name] = kind
        return kind

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for entry_point in entry_points(group=self._group):
            try:
                kind = entry_point.load()
            except Exception as e:  # a broken plugin must not break every other bot
                logger.warning(f"Skipping {self._what} plugin '{entry_point.name}': {e}")
                continue
            if not isinstance(kind, self._kind_type):
                logger.warning(f"Skipping {self._what} plugin '{entry_point.name}': not a {self._kind_type.__name__}")
                continue
            self.register(kind)

    def get(self, name: str) -> K:
        """The kind called ``name``; raises :class:`UnknownKindError` listing the known kinds."""
        self._ensure_loaded()
        try:
            return self._kinds[name]
        except KeyError:
            raise UnknownKindError(
                f"unknown {self._what} kind '{name}'; known kinds: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Registered kind names, sorted."""
        self._ensure_loaded()
        return sorted(self._kinds)

    def kinds(self) -> list[K]:
        """Registered kinds, sorted by name."""
        return [self._kinds[name] for name in self.names()]


class ProcessorRegistry(KindRegistry[ProcessorKind]):
    """Processor kinds by name (``kinds``, then the ``vivavoce.processors`` entry points)."""

    def __init__(self, kinds: Iterable[ProcessorKind] = (), *, load_plugins: bool = True):
        """See :class:`KindRegistry`."""
        super().__init__("processor", ProcessorKind, PROCESSOR_ENTRY_POINTS, kinds, load_plugins=load_plugins)


class TransportRegistry(KindRegistry[TransportKind]):
    """Transport kinds by name (``kinds``, then the ``vivavoce.transports`` entry points)."""

    def __init__(self, kinds: Iterable[TransportKind] = (), *, load_plugins: bool = True):
        """See :class:`KindRegistry`."""
        super().__init__("transport", TransportKind, TRANSPORT_ENTRY_POINTS, kinds, load_plugins=load_plugins)


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
