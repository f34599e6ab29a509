"""The engine interface every model family implements, and the queue that shares one model.

An engine generates audio synchronously in one generation thread (GPU work is serialised: one model,
many sessions); ``GenerationQueue.stream`` turns that into an async iterator of PCM16 chunks for the
server. Cancel is cooperative: ``emit`` raises ``Cancelled`` once the request is cancelled, and engines
call it once per frame, so generation stops within one frame.
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

from vivavoce_worker.audio import float_to_pcm16
from vivavoce_worker.protocol import ContextTurn

Emit = Callable[[np.ndarray], None]


class Cancelled(Exception):
    """Raised inside generation when its request was cancelled."""


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
        return {
            k: (round(v, 1) if isinstance(v, float) else v)
            for k, v in self.__dict__.items()
        }


class Engine(ABC):
    """A model family behind the worker protocol.

    Subclasses load their model once in ``load``, run one short generation in ``warmup`` and produce
    audio in ``generate``. Everything model-related runs in the single generation thread.
    """

    name: str = "engine"
    sample_rate: int = 24000
    device: str = "cpu"

    @abstractmethod
    def load(self) -> None:
        """Load the model (once per process)."""

    def warmup(self) -> None:
        """Run one short generation so that the first request does not pay for lazy initialisation."""
        self.generate(SynthesisRequest(id="warmup", text="Hello.", max_audio_ms=400), self.new_session(), lambda _: None)

    def new_session(self) -> Any:
        """Per-session state (conversation context, caches); None when the family keeps none."""
        return None

    @abstractmethod
    def generate(self, request: SynthesisRequest, session: Any, emit: Emit) -> None:
        """Synthesise ``request``, calling ``emit(float32 samples)`` once per frame or chunk.

        Runs in the generation thread. ``emit`` raises ``Cancelled`` once the request is cancelled:
        let it propagate (after restoring any model state) so that generation stops there.
        """

    def health(self) -> dict[str, Any]:
        """Extra engine fields for ``/health``."""
        return {}


class GenerationQueue:
    """Serialises an engine's generations in one thread and streams their chunks to asyncio."""

    def __init__(self, engine: Engine):
        """Share ``engine`` between all sessions of this process."""
        self.engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{engine.name}-gen")
        self._waiting = 0
        self._lock = threading.Lock()
        self.finished = 0
        self.cancelled = 0

    @property
    def depth(self) -> int:
        """Requests waiting for the model (not counting the one generating)."""
        return self._waiting

    def run_sync(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the generation thread and wait (used at start-up: load, warm-up)."""
        return self._executor.submit(fn).result()

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the generation thread from asyncio (e.g. computing a voice's conditionals)."""
        return await asyncio.wrap_future(self._executor.submit(fn))

    async def stream(
        self, request: SynthesisRequest, session: Any, stats: GenerationStats
    ) -> AsyncIterator[bytes]:
        """PCM16 chunks of ``request`` as the engine produces them.

        Leaving the iteration early (or cancelling the task) cancels the request, which stops the
        generation within one frame. Engine errors propagate.
        """
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        submitted = time.perf_counter()
        with self._lock:
            self._waiting += 1

        def emit(samples: np.ndarray) -> None:
            if request.cancelled.is_set():
                raise Cancelled(request.id)
            if stats.first_chunk_ms is None:
                stats.first_chunk_ms = (time.perf_counter() - submitted) * 1000
            stats.audio_ms += 1000 * len(samples) / self.engine.sample_rate
            loop.call_soon_threadsafe(chunks.put_nowait, float_to_pcm16(samples))

        def job() -> None:
            with self._lock:
                self._waiting -= 1
            stats.queued_ms = (time.perf_counter() - submitted) * 1000
            outcome: BaseException | None = None
            try:
                if request.cancelled.is_set():
                    raise Cancelled(request.id)
                self.engine.generate(request, session, emit)
            except Cancelled:
                stats.cancelled = True
                self.cancelled += 1
            except BaseException as e:  # handed to the awaiting coroutine
                outcome = e
            stats.total_ms = (time.perf_counter() - submitted) * 1000
            self.finished += 1
            loop.call_soon_threadsafe(chunks.put_nowait, outcome)

        future = self._executor.submit(job)
        try:
            while True:
                item = await chunks.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not future.done():
                request.cancelled.set()
                stats.cancelled = True
