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


@dataclass
class WorkerFailoverFrame(SystemFrame):
    """A service lost its model worker mid-call and moved to another one; pushed by that service.

    ``service``: what failed over (``"moshi"``, ``"tts"``, ``"stt"``...); ``from_url``: the worker lost;
    ``to_url``: the worker now serving (None: none could be reached, and the service gives up); ``reason``:
    how the loss was noticed (the socket closed, an error, no audio within a deadline); ``degraded``: the
    new worker lacks state the old one had, so the call goes on but not as it would have (Moshi: the
    conversation so far is forgotten). The turn recorder puts it in the report and the metrics.
    """

    service: str = ""
    from_url: str | None = None
    to_url: str | None = None
    reason: str = ""
    degraded: bool = False
