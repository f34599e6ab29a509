"""The engine interface every model family implements, and the queue that shares one model.

An engine generates audio synchronously in a generation thread; the model computes for one request
at a time (one model, many sessions) and ``GenerationQueue.stream`` turns that into an async iterator
of float32 chunks for the server, loudness-normalised when the worker asks for it (``loudness.py``).
Cancel is cooperative: ``emit`` raises ``Cancelled`` once the request is cancelled, and engines call
it once per frame, so generation stops within one frame.
"""

from __future__ import annotations

import asyncio
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vivavoce_worker.loudness import LoudnessControl
from vivavoce_worker.protocol import ContextTurn
from vivavoce_worker.turnstile import Turnstile

Emit = Callable[[np.ndarray], None]


class Cancelled(Exception):
    """Raised inside generation when its request was cancelled."""


class NotSupported(ValueError):
    """A request asks for something this model family cannot do (``not_supported`` on ``/v1/tts``)."""


class UnknownVoice(ValueError):
    """A request names a voice the worker does not have (``unknown_voice`` on ``/v1/tts``)."""


@dataclass
class ServiceOptions:
    """What ``/v1/tts``'s ``chunk_size`` and ``emotion`` mean for one engine (see PROTOCOL.md)."""

    options: dict[str, Any] = field(default_factory=dict)  # engine options of the request
    chunk_ms: float | None = None  # re-cut the output into chunks of this much audio; None: the engine's chunks


@dataclass
class SynthesisRequest:
    """One utterance to synthesise, as the protocol's ``synthesize`` message describes it."""

    id: str
    text: str
    voice: str | None = None
    speaker: int | None = None
    context: list[ContextTurn] = field(default_factory=list)
    max_audio_ms: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    sample_rate: int | None = None  # output rate asked for (None: the engine's); the server resamples
    frame_ms: int | None = None  # fixed output frames asked for; the server cuts them
    cancelled: threading.Event = field(default_factory=threading.Event)
    report: dict[str, Any] = field(default_factory=dict)  # engine facts for the `done` message


@dataclass
class GenerationStats:
    """Timings of one request, sent in its ``done`` message."""

    queued_ms: float = 0.0
    first_chunk_ms: float | None = None
    total_ms: float = 0.0
    audio_ms: float = 0.0
    cancelled: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures, rounded to 0.1 ms."""
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class Engine(ABC):
    """A model family behind the worker protocol.

    Subclasses load their model once in ``load``, run one short generation in ``warmup`` and produce
    audio in ``generate``, which runs in a generation thread with the model to itself (the queue's
    turnstile).
    """

    name: str = "engine"
    sample_rate: int = 24000
    device: str = "cpu"
    # True when several requests may be mid-generation at once, taking turns frame by frame: the
    # engine keeps no per-request state on itself (CSM); False runs requests one after another.
    interleave_frames: bool = False
    # What one unit of /v1/tts's `chunk_size` is, in ms of audio, for families that do not take it
    # themselves (CSM: one 80 ms frame; Piper and the default: 1 ms).
    chunk_unit_ms: float = 1.0
    # The registry of cloned voices (``register_voice``), set by families that clone (Chatterbox).
    voice_registry: Any = None

    @abstractmethod
    def load(self) -> None:
        """Load the model (once per process)."""

    def warmup(self) -> None:
        """Run one short generation so that the first request does not pay for lazy initialisation."""
        self.generate(
            SynthesisRequest(id="warmup", text="Hello.", max_audio_ms=400), self.new_session(), lambda _: None
        )

    def new_session(self) -> Any:
        """Per-session state (conversation context, caches); None when the family keeps none."""
        return None

    @abstractmethod
    def generate(self, request: SynthesisRequest, session: Any, emit: Emit) -> None:
        """Synthesise ``request``, calling ``emit(float32 samples)`` once per frame or chunk.

        Runs in a generation thread. ``emit`` raises ``Cancelled`` once the request is cancelled:
        let it propagate (after restoring any model state) so that generation stops there.
        """

    def health(self) -> dict[str, Any]:
        """Extra engine fields for ``/health``."""
        return {}

    async def acquire(self, request: SynthesisRequest) -> Callable[[], None] | None:
        """Make what ``request`` needs resident before it queues, on the event loop (a family with a model
        manager loads its voice here: ``resident.py``); returns what to call once the request is done.

        Its errors (``UnknownVoice``, a failed load) are the request's. The default needs nothing.
        """
        return None

    def voice_names(self) -> list[str]:
        """The voices a request may name, for error messages (families with a ``voices`` mapping: its keys)."""
        return list(getattr(self, "voices", None) or ())

    def known_voice(self, voice: str) -> bool:
        """Whether ``voice`` can be asked for (families with a ``voices`` mapping: one of its keys)."""
        voices = getattr(self, "voices", None)
        return voices is None or voice in voices

    def service_options(self, chunk_size: int | None, emotion: str | float | None) -> ServiceOptions:
        """Map ``/v1/tts``'s ``chunk_size`` and ``emotion`` onto this family.

        The default: ``chunk_size`` counts ``chunk_unit_ms`` of audio per chunk, and only a neutral
        ``emotion`` is accepted (``NotSupported`` otherwise).
        """
        if emotion is not None and emotion != "neutral":
            raise NotSupported(f"{self.name} has no emotion control: send no `emotion` or 'neutral'")
        return ServiceOptions(chunk_ms=chunk_size * self.chunk_unit_ms if chunk_size else None)


MAX_ACTIVE_REQUESTS = 16


class GenerationQueue:
    """Shares one engine between all sessions and streams each request's chunks to asyncio.

    The model computes for one request at a time (a FIFO turnstile). An engine with
    ``interleave_frames`` hands the model to the next waiting request after every frame it emits, so
    concurrent sessions advance frame by frame instead of waiting for whole utterances; the others
    run their requests strictly one after another.
    """

    def __init__(
        self, engine: Engine, max_active: int = MAX_ACTIVE_REQUESTS, *, loudness: LoudnessControl | None = None
    ):
        """Share ``engine``; at most ``max_active`` requests are in generation at once.

        ``loudness``: normalise every request's audio (None: the engine's output as it is).
        """
        self.engine = engine
        self.loudness = loudness
        workers = max_active if engine.interleave_frames else 1
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{engine.name}-gen")
        self._turnstile = Turnstile()
        self._waiting = 0
        self._lock = threading.Lock()
        self.finished = 0
        self.cancelled = 0
        self.streaming = 0  # requests whose audio is being generated or sent

    @property
    def depth(self) -> int:
        """Requests that have not started generating yet."""
        return self._waiting

    def _exclusive(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with self._turnstile:
                return fn()

        return run

    def run_sync(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` with the model to itself and wait (start-up: load, warm-up)."""
        return self._executor.submit(self._exclusive(fn)).result()

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` with the model to itself, from asyncio (e.g. computing a voice's conditionals)."""
        return await asyncio.wrap_future(self._executor.submit(self._exclusive(fn)))

    async def stream(
        self, request: SynthesisRequest, session: Any, stats: GenerationStats
    ) -> AsyncIterator[np.ndarray]:
        """Float32 chunks of ``request`` at the engine's rate, as the engine produces them.

        Leaving the iteration early (or cancelling the task) cancels the request, which stops the
        generation within one frame. Engine errors propagate.
        """
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[np.ndarray | BaseException | None] = asyncio.Queue()
        submitted = time.perf_counter()
        release = await self.engine.acquire(request)  # a voice that is not resident loads here, off the loop
        voice = (request.voice, request.speaker)
        normalizer = self.loudness.normalizer(self.engine.sample_rate, voice) if self.loudness else None
        with self._lock:
            self._waiting += 1

        def emit(samples: np.ndarray) -> None:
            if request.cancelled.is_set():
                raise Cancelled(request.id)
            if stats.first_chunk_ms is None:
                stats.first_chunk_ms = (time.perf_counter() - submitted) * 1000
            stats.audio_ms += 1000 * len(samples) / self.engine.sample_rate
            out = normalizer.process(samples) if normalizer else np.asarray(samples, dtype=np.float32).reshape(-1)
            loop.call_soon_threadsafe(chunks.put_nowait, out)
            if self.engine.interleave_frames:
                self._turnstile.pass_turn()

        def job() -> None:
            outcome: BaseException | None = None
            with self._turnstile:
                with self._lock:
                    self._waiting -= 1
                stats.queued_ms = (time.perf_counter() - submitted) * 1000
                try:
                    if request.cancelled.is_set():
                        raise Cancelled(request.id)
                    self.engine.generate(request, session, emit)
                    if normalizer is not None:
                        self.loudness.learn(voice, normalizer)
                except Cancelled:
                    stats.cancelled = True
                    self.cancelled += 1
                except BaseException as e:  # handed to the awaiting coroutine
                    outcome = e
            stats.total_ms = (time.perf_counter() - submitted) * 1000
            self.finished += 1
            if release is not None:  # once generation has stopped (not when the listener left), before the end
                loop.call_soon_threadsafe(release)
            loop.call_soon_threadsafe(chunks.put_nowait, outcome)

        future = self._executor.submit(job)
        self.streaming += 1
        try:
            while True:
                item = await chunks.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.streaming -= 1
            if not future.done():
                request.cancelled.set()
                stats.cancelled = True
