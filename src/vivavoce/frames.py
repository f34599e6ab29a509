"""Frames vivavoce adds to pipecat's."""

from __future__ import annotations

from dataclasses import dataclass

from pipecat.frames.frames import SystemFrame


@dataclass
class BotOutputPauseFrame(SystemFrame):
    """Pause (``paused=True``) or resume the bot's audio at the output transport, keeping what is queued.

    A pause takes effect within one audio frame; an ``InterruptionFrame`` while paused drops the queue
    and ends the pause. Transports that cannot pause ignore it.
    """

    paused: bool = True
