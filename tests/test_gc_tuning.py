"""The serving process's collector settings: start-up objects frozen, full collections spaced out."""

from __future__ import annotations

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
