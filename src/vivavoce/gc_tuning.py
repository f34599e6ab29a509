"""Garbage-collector settings for a process serving many live sessions.

CPython's full (generation 2) collection walks every tracked object and stops the event loop while it
does: with many phone calls in one process, each full collection paused every call's audio long enough
to be heard, and most of what it walked were the objects the models and libraries left at start-up,
which never become garbage. Freezing those after start-up takes them out of every later collection;
making full collections rarer (every 100 younger collections instead of 10) leaves the pauses
proportional to the live calls, not the libraries, and less frequent. Ended calls' reference cycles are
still collected, only later: a process holds the garbage of the calls that ended since the last full
collection. Under a load of short calls that levels off; real calls, minutes long, leave little.

When a session ends, its garbage is collected and the C heap's free pages go back to the system (glibc's
``malloc_trim``, in a thread), at most every ``TRIM_EVERY_SECS``: a process taking call after call
(bench/fleet_soak.py) otherwise grew ~1.5 MB a minute, all of it ended calls' garbage that full collections,
spaced out, had not reached yet (a collection and a trim at the end gave the memory back).

bench/twilio_load.py measures the audio gaps and the memory per call; figures in bench/README.md.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable

from loguru import logger

FULL_COLLECTION_EVERY = 100
"""Generation-1 collections between full collections (CPython's default is 10)."""


def settle_after_startup() -> None:
    """Collect once, freeze what start-up loaded, and space out full collections."""
    gc.collect()
    gc.freeze()
    # CPython runs a full collection only once the objects promoted since the last one exceed a quarter of
    # those it counted then: after the collection above, everything start-up loaded. Collecting again, now
    # that those are frozen, counts nothing, so later full collections come every FULL_COLLECTION_EVERY
    # instead of after hundreds of thousands of promoted objects (ended calls' garbage in the meantime).
    gc.collect()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


TRIM_EVERY_SECS = 30.0
"""At most one ``malloc_trim`` per this many seconds, however many sessions end."""

_last_trim = [float("-inf")]


def _malloc_trim() -> Callable[[int], int] | None:
    libc = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None  # glibc only


_TRIM = _malloc_trim()


def trim_c_heap() -> None:
    """Hand the C heap's free pages back to the system now (nothing where libc is not glibc)."""
    if _TRIM is not None:
        _TRIM(0)


async def return_freed_memory() -> bool:
    """After a session: collect its garbage and :func:`trim_c_heap` (in a thread: ctypes releases the GIL),
    unless that was done less than ``TRIM_EVERY_SECS`` ago. Returns whether it ran.

    The collection is a full one, but start-up's objects are frozen: it walks only the live calls' objects
    (about a thousand per call of bench/fleet_soak.py's TTS pipelines), as the spaced-out full collections
    do, and adds at most one of those pauses per ``TRIM_EVERY_SECS``."""
    now = time.monotonic()
    if now - _last_trim[0] < TRIM_EVERY_SECS:
        return False
    _last_trim[0] = now
    started = time.perf_counter()
    found = gc.collect()
    collected = time.perf_counter()
    await asyncio.to_thread(trim_c_heap)
    logger.debug(
        "returned freed memory: {} objects collected in {:.1f} ms, C heap trimmed in {:.1f} ms",
        found, (collected - started) * 1000, (time.perf_counter() - collected) * 1000,
    )  # fmt: skip
    return True
