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


@dataclass
class AnswerGateFrame(SystemFrame):
    """Hold the next answer's audio before the output (:class:`vivavoce.processors.answer_gate.AnswerGate`).

    The end-of-turn strategy starts writing an answer when the user pauses, before it knows whether they
    are done: ``hold=True`` holds the answer ``answer`` until a later frame for the same ``answer`` gives
    ``not_before`` (wall-clock seconds, ``time.time()``) when it may play. An interruption drops it.
    """

    answer: int = 0
    hold: bool = True
    not_before: float | None = None
