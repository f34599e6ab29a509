"""The serving process's collector settings: start-up objects frozen, full collections spaced out."""

from __future__ import annotations

import collections
import gc
import weakref

from vivavoce.gc_tuning import FULL_COLLECTION_EVERY, settle_after_startup


def test_settle_after_startup_freezes_and_spaces_full_collections():
    thresholds = gc.get_threshold()
    loaded = [object() for _ in range(10)], {"a model": [1, 2, 3]}  # start-up objects the collector tracks
    try:
        settle_after_startup()
        assert gc.get_freeze_count() >= len(gc.get_referents(*loaded))
        assert gc.get_threshold() == (thresholds[0], thresholds[1], FULL_COLLECTION_EVERY)
        # Garbage made after start-up is still collected.
        cycle: list = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_full_collections_come_every_full_collection_every_however_much_start_up_loaded():
    thresholds = gc.get_threshold()
    loaded = [[i] for i in range(300_000)]  # start-up: what torch, pipecat and the models leave
    try:
        settle_after_startup()
        full = gc.get_stats()[2]["collections"]
        alive: collections.deque = collections.deque(maxlen=5)  # a few calls' objects live at any time
        for _ in range(3 * 700 * 10 * FULL_COLLECTION_EVERY):  # three full collections' worth of garbage
            cycle: list = []
            cycle.append(cycle)
            alive.append(cycle)
        # CPython held back full collections until a quarter of what start-up loaded had been promoted:
        # none would have run here.
        assert gc.get_stats()[2]["collections"] - full >= 2
    finally:
        del loaded
        gc.unfreeze()
        gc.set_threshold(*thresholds)


class Garbage:
    def __init__(self, cycle: list):
        cycle.append(self)


async def test_an_ended_call_s_garbage_is_collected_and_the_heap_trimmed_at_most_every_trim_every_secs(monkeypatch):
    from vivavoce import gc_tuning

    calls: list[int] = []
    monkeypatch.setattr(gc_tuning, "_TRIM", calls.append)  # trim_c_heap calls it with 0
    monkeypatch.setattr(gc_tuning, "_last_trim", [float("-inf")])
    ended_call: list = []
    ended_call.append(ended_call)  # a cycle: only a collection frees it
    survivor = weakref.ref(Garbage(ended_call))
    del ended_call
    assert await gc_tuning.return_freed_memory()
    assert survivor() is None
    assert not await gc_tuning.return_freed_memory()  # a burst of calls ending: one trim
    monkeypatch.setattr(gc_tuning, "_last_trim", [gc_tuning._last_trim[0] - gc_tuning.TRIM_EVERY_SECS])
    assert await gc_tuning.return_freed_memory()
    assert calls == [0, 0]


def test_glibc_s_malloc_trim_is_found():
    from vivavoce import gc_tuning

    assert gc_tuning._TRIM is not None  # this image's libc is glibc: the trim is real here
