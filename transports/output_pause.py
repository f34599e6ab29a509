"""Pausing an output transport's audio (pause-then-resume barge-in), shared by the transports that can."""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import Frame, InterruptionFrame

from vivavoce.frames import BotOutputPauseFrame


class OutputPause:
    """Pause state of one output transport.

    The transport calls :meth:`on_frame` for every frame (it consumes ``BotOutputPauseFrame``) and
    awaits :meth:`may_play` before writing each audio frame: while paused, the writing (and so the
    transport's queue) waits; an interruption during the pause drops the held frame.
    """

    def __init__(self) -> None:
        """Start playing."""
        self._playing = asyncio.Event()
        self._playing.set()
        self._drop_held = False
        self.interruptions = 0

    @property
    def paused(self) -> bool:
        """Whether audio is held now."""
        return not self._playing.is_set()

    def on_frame(self, frame: Frame) -> bool:
        """Update from ``frame``; True if the frame was a pause/resume (consumed, not forwarded)."""
        if isinstance(frame, BotOutputPauseFrame):
            if frame.paused:
                self._playing.clear()
            else:
                self._playing.set()
            return True
        if isinstance(frame, InterruptionFrame):
            self.interruptions += 1  # a frame waiting for its turn to play is dropped (see may_play users)
            if self.paused:
                self._drop_held = True
                self._playing.set()
        return False

    async def may_play(self) -> bool:
        """Wait while paused; False if the held frame must be dropped (the pause ended in an interruption)."""
        if not self.paused:
            return True
        await self._playing.wait()
        if self._drop_held:
            self._drop_held = False
            return False
        return True
