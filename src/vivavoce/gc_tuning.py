"""Garbage-collector settings for a process serving many live sessions.

CPython's full (generation 2) collection walks every tracked object and stops the event loop while it
does: with many phone calls in one process, each full collection paused every call's audio long enough
to be heard, and most of what it walked were the objects the models and libraries left at start-up,
which never become garbage. Freezing those after start-up takes them out of every later collection;
making full collections rarer (every 100 younger collections instead of 10) leaves the pauses
proportional to the live calls, not the libraries, and less frequent. Ended calls' reference cycles are
still collected, only later: a process holds the garbage of the calls that ended since the last full
collection. Under a load of short calls that levels off; real calls, minutes long, leave little.

bench/twilio_load.py measures the audio gaps and the memory per call; figures in bench/README.md.
"""

from __future__ import annotations

import gc

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
