"""The model manager: which of a worker's models (or voices) are in memory, loaded on demand, shared, evicted.

A worker may serve more models than it keeps loaded. ``ResidentModels`` loads one the first time a request
asks for it (in a loader thread, off the event loop, warm-up included: the loader's job), and concurrent
first requests for it wait for that one load. Requests hold a reference while they use a model
(``acquire`` ... ``release``); a model is evicted when it has been idle ``idle_ttl_s``, or, least recently
used first, when more than ``cap`` are resident. A model in use is never evicted, nor one loaded less than
``min_residency_s`` ago (so two voices taking turns beyond the cap do not reload on every request): the cap
is then exceeded until one of them may go, and a request is never refused for want of room. A load that
fails is reported to every request waiting for it and tried again by the next one.

The state lives on the event loop (``acquire``, ``release``, ``sweep``); ``load_now`` is for start-up,
before the worker serves. Family-independent: the loader and ``on_evict`` hold everything model-specific.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from loguru import logger

M = TypeVar("M")


def return_freed_memory() -> None:
    """Collect cycles, then hand the C heap's free pages back to the system (glibc's ``malloc_trim``).

    Without it an evicted model's memory stays in the allocator's per-thread arenas: measured on the Piper worker,
    RSS grew by 150 MB over 11 load-and-evict cycles, and by 15-30 MB with it (bench/README.md, ``resident.py``).
    """
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc:
        trim = getattr(ctypes.CDLL(libc), "malloc_trim", None)  # glibc only
        if trim is not None:
            trim(0)


@dataclass
class _Entry(Generic[M]):
    key: str
    future: asyncio.Future | None  # None: loaded synchronously (load_now)
    model: M | None = None
    loaded: bool = False
    refs: int = 0
    uses: int = 0
    loaded_at: float = 0.0
    last_used: float = 0.0
    load_ms: float = 0.0


class ResidentModels(Generic[M]):
    """Models loaded on demand by ``loader(key)``, reference-counted, evicted by idle TTL and LRU beyond ``cap``.

    ``cap``: most models resident at once (None: no limit); ``idle_ttl_s``: evict a model idle this long
    (None or 0: never); ``min_residency_s``: never evict a model loaded less than this ago; ``clock``: the
    time source (seconds, monotonic; tests pass their own); ``on_evict(key, model)``: frees what dropping the
    reference does not (e.g. a GPU cache); ``kind``: what the models are, for logs; ``sweep_every_s``: how often
    idle models are looked for unasked, once ``start`` ran (None: only on ``release``, new loads and ``sweep``);
    ``trim_after_evict``: give an evicted model's memory back to the system (``return_freed_memory``).
    """

    def __init__(
        self,
        loader: Callable[[str], M],
        *,
        cap: int | None = None,
        idle_ttl_s: float | None = None,
        min_residency_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        on_evict: Callable[[str, M], None] | None = None,
        kind: str = "model",
        max_parallel_loads: int = 1,
        history: int = 32,
        sweep_every_s: float | None = 1.0,
        trim_after_evict: bool = True,
    ):
        """Nothing is loaded until ``load_now`` or ``acquire``."""
        if cap is not None and cap < 1:
            raise ValueError(f"the resident cap must be at least 1, not {cap}")
        self._loader, self._on_evict, self._clock = loader, on_evict, clock
        self.cap, self.idle_ttl_s, self.min_residency_s = cap, idle_ttl_s or None, min_residency_s
        self.kind, self.sweep_every_s, self.trim_after_evict = kind, sweep_every_s, trim_after_evict
        self._entries: dict[str, _Entry[M]] = {}
        self.loads = self.evictions = self.load_failures = 0
        self.events: deque[dict[str, Any]] = deque(maxlen=history)  # the latest loads and evictions, for /health
        # Loads get their own threads: a voice loading never holds up the generation of the others.
        self._executor = ThreadPoolExecutor(max_workers=max_parallel_loads, thread_name_prefix=f"{kind}-load")
        # Trimming gets its own thread too: a load that evicted to make room does not wait for it.
        self._trimmer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{kind}-trim")
        self._tasks: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None

    # -- what is resident

    def is_resident(self, key: str) -> bool:
        """Whether ``key`` is loaded (not merely loading)."""
        entry = self._entries.get(key)
        return entry is not None and entry.loaded

    def peek(self, key: str) -> M | None:
        """The loaded model of ``key`` without taking a reference (None if it is not resident).

        Safe from a generation thread for a key the request holds (``acquire``): it cannot be evicted then.
        """
        entry = self._entries.get(key)
        return entry.model if entry is not None and entry.loaded else None

    @property
    def resident(self) -> list[str]:
        """The loaded keys, most recently used first."""
        loaded = [e for e in self._entries.values() if e.loaded]
        return [e.key for e in sorted(loaded, key=lambda e: e.last_used, reverse=True)]

    def refs(self, key: str) -> int:
        """Requests holding ``key`` now (those waiting for its load included)."""
        entry = self._entries.get(key)
        return entry.refs if entry is not None else 0

    def report(self) -> dict[str, Any]:
        """JSON-ready state for ``/health``: what is resident (refs, idle time), the counters, the latest events."""
        now = self._clock()
        loaded = [e for e in self._entries.values() if e.loaded]
        return {
            "resident": [
                {
                    "id": e.key,
                    "refs": e.refs,
                    "idle_s": round(now - e.last_used, 3),
                    "resident_s": round(now - e.loaded_at, 3),
                    "load_ms": round(e.load_ms, 1),
                    "uses": e.uses,
                }
                for e in sorted(loaded, key=lambda e: e.last_used, reverse=True)
            ],
            "loading": [e.key for e in self._entries.values() if not e.loaded],
            "loads": self.loads,
            "evictions": self.evictions,
            "load_failures": self.load_failures,
            "resident_cap": self.cap,
            "idle_ttl_s": self.idle_ttl_s,
            "min_residency_s": self.min_residency_s,
            "model_events": list(self.events),
        }

    # -- loading

    def load_now(self, key: str) -> M:
        """Load ``key`` in the calling thread (start-up: before serving, with no ``acquire`` running)."""
        entry = self._entries.get(key)
        if entry is not None and entry.loaded:
            return entry.model  # type: ignore[return-value]
        started = time.perf_counter()
        try:
            model = self._loader(key)
        except Exception as e:
            self._failed(key, e)
            raise
        entry = _Entry(key, future=None)
        self._entries[key] = entry
        self._loaded(entry, model, (time.perf_counter() - started) * 1000)
        return model

    async def acquire(self, key: str) -> M:
        """The model of ``key``, loaded first if it is not resident; hold it until ``release(key)``.

        Concurrent acquires of a key that is loading wait for the same load. A failed load raises its error
        here (for every waiter), and the next acquire tries again. Cancelling the caller while it waits
        leaves the load running: the model becomes resident, unreferenced.
        """
        self.start()
        entry = self._entries.get(key)
        if entry is None:
            loop = asyncio.get_running_loop()
            entry = _Entry(key, future=loop.create_future(), last_used=self._clock())
            self._entries[key] = entry
            task = loop.create_task(self._load(entry), name=f"load-{key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            self.sweep()  # room for it: idle models beyond the cap go now, before it takes memory
        entry.refs += 1  # counted while waiting, so the model cannot go between its load and its use
        if not entry.loaded:
            try:
                await asyncio.shield(entry.future)
            except BaseException:
                entry.refs -= 1
                raise
        entry.uses += 1
        entry.last_used = self._clock()
        return entry.model  # type: ignore[return-value]

    def release(self, key: str) -> None:
        """Give back one reference taken by ``acquire``; an unused model beyond the cap may go at once."""
        entry = self._entries.get(key)
        if entry is None or entry.refs <= 0:
            logger.warning("{} {} released more often than acquired", self.kind, key)
            return
        entry.refs -= 1
        entry.last_used = self._clock()
        self.sweep()

    async def _load(self, entry: _Entry[M]) -> None:
        started = time.perf_counter()
        try:
            model = await asyncio.get_running_loop().run_in_executor(self._executor, self._loader, entry.key)
        except Exception as e:
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]
            self._failed(entry.key, e)
            entry.future.set_exception(e)
            entry.future.exception()  # retrieved: no "never retrieved" warning when every waiter has left
            return
        except BaseException:  # the loop is shutting down: nobody waits any more
            self._entries.pop(entry.key, None)
            entry.future.cancel()
            raise
        self._loaded(entry, model, (time.perf_counter() - started) * 1000)
        entry.future.set_result(model)

    def _loaded(self, entry: _Entry[M], model: M, load_ms: float) -> None:
        now = self._clock()
        entry.model, entry.loaded, entry.load_ms = model, True, load_ms
        entry.loaded_at = entry.last_used = now
        self.loads += 1
        self._event("load", entry.key, load_ms=round(load_ms, 1))
        logger.info(
            "{} {} loaded and warmed up in {:.0f} ms ({} resident)", self.kind, entry.key, load_ms, self._count()
        )

    def _failed(self, key: str, error: Exception) -> None:
        self.load_failures += 1
        self._event("load_failed", key, error=f"{type(error).__name__}: {error}")
        logger.error("{} {} failed to load: {}: {}", self.kind, key, type(error).__name__, error)

    # -- eviction

    def sweep(self) -> list[str]:
        """Evict what may go now: models idle past the TTL, then the least recently used beyond the cap.

        Returns the evicted keys. Runs on every release and new load, and every second (``start``).
        """
        now = self._clock()
        evicted = []
        if self.idle_ttl_s:
            for entry in list(self._entries.values()):
                if self._evictable(entry, now) and now - entry.last_used >= self.idle_ttl_s:
                    evicted.append(self._evict(entry, "idle", now))
        while self.cap is not None and self._count() > self.cap:
            candidates = [e for e in self._entries.values() if self._evictable(e, now)]
            if not candidates:
                break  # all in use or too recent: over the cap until one may go
            evicted.append(self._evict(min(candidates, key=lambda e: e.last_used), "lru", now))
        return evicted

    def _count(self) -> int:
        return len(self._entries)  # loading ones included: they are about to take their memory

    def _evictable(self, entry: _Entry[M], now: float) -> bool:
        return entry.loaded and entry.refs == 0 and now - entry.loaded_at >= self.min_residency_s

    def _evict(self, entry: _Entry[M], reason: str, now: float) -> str:
        del self._entries[entry.key]
        model, entry.model = entry.model, None
        self.evictions += 1
        idle_s = now - entry.last_used
        self._event(
            "evict", entry.key, reason=reason, idle_s=round(idle_s, 3), resident_s=round(now - entry.loaded_at, 3)
        )
        logger.info(
            "{} {} evicted ({}; idle {:.1f} s, {} resident)", self.kind, entry.key, reason, idle_s, self._count()
        )
        if self._on_evict is not None:
            try:
                self._on_evict(entry.key, model)  # type: ignore[arg-type]
            except Exception:
                logger.exception("freeing {} {} failed", self.kind, entry.key)
        del model
        if self.trim_after_evict:
            with contextlib.suppress(RuntimeError):  # after stop(): the process is exiting anyway
                self._trimmer.submit(return_freed_memory)
        return entry.key

    def _event(self, event: str, key: str, **facts: Any) -> None:
        self.events.append({"event": event, "id": key, "at": round(time.time(), 3), **facts})

    # -- the periodic sweep

    def start(self) -> None:
        """Sweep every ``sweep_every_s`` on the running loop (idempotent), so that idle models expire unasked."""
        if self.sweep_every_s and (self._sweeper is None or self._sweeper.done()):
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_every(self.sweep_every_s), name="sweep")

    async def stop(self) -> None:
        """Stop sweeping and the loader threads (shutdown)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._trimmer.shutdown(wait=False, cancel_futures=True)

    async def _sweep_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.sweep()
            except Exception:  # a failing on_evict must not stop expiry
                logger.exception("sweeping resident {}s failed", self.kind)
