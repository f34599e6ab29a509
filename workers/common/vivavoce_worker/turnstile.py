"""A first-come, first-served lock whose holder can hand over to the next in line."""

from __future__ import annotations

import threading
from collections import deque


class Turnstile:
    """FIFO mutual exclusion: ``with turnstile:``; ``pass_turn()`` lets everyone waiting go first.

    ``threading.Lock`` is not fair: a thread that releases and re-acquires at once usually wins again,
    which would let one generation starve the others.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._line: deque[object] = deque()
        self._held = False

    def acquire(self) -> None:
        """Wait for this thread's turn."""
        ticket = object()
        with self._cond:
            self._line.append(ticket)
            while self._held or self._line[0] is not ticket:
                self._cond.wait()
            self._line.popleft()
            self._held = True

    def release(self) -> None:
        """End this thread's turn."""
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def pass_turn(self) -> None:
        """Let every thread already waiting have a turn, then continue (the holder only)."""
        with self._cond:
            if not self._line:
                return
        self.release()
        self.acquire()

    def __enter__(self) -> Turnstile:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
