"""The serving process's collector settings: start-up objects frozen, full collections spaced out."""

from __future__ import annotations

import collections
import gc

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
