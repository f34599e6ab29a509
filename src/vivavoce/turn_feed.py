"""Per-turn latency for the client: each answered turn's voice-to-voice and stages, as an RTVI server message.

The :class:`~vivavoce.turns.TurnRecorder` measures the turn; this observer runs it and, the moment the
bot starts answering, sends the turn to the client over pipecat's RTVI (``server-message`` with
``{"type": "turn-latency", ...}``). It wraps the recorder rather than running beside it: pipecat runs
each observer in its own task, so a second observer could look before the recorder has seen the frame.
"""

from __future__ import annotations

from typing import Any

from loguru import logger
from pipecat.frames.frames import BotStartedSpeakingFrame
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frameworks.rtvi import RTVIProcessor

from vivavoce.turns import Turn, TurnRecorder

MESSAGE_TYPE = "turn-latency"


def turn_message(number: int, turn: Turn) -> dict[str, Any]:
    """The message the page gets for an answered turn."""
    return {
        "type": MESSAGE_TYPE,
        "turn": number,
        "user_text": turn.user_text.strip(),
        "voice_to_voice_ms": turn.voice_to_voice_ms,
        "stages_ms": turn.stages_ms(),
        "ttfb_ms": dict(turn.ttfb_ms),
    }


class TurnFeed(BaseObserver):
    """Runs ``recorder`` on every frame and reports each answered turn to the client through RTVI."""

    def __init__(self, recorder: TurnRecorder, **kwargs: Any):
        """Wrap ``recorder``; :meth:`attach` the worker's RTVI processor before the pipeline starts."""
        super().__init__(observe_every_push=False, **kwargs)
        self.recorder = recorder
        self._rtvi: RTVIProcessor | None = None
        self._sent: set[int] = set()  # ids of the turns already reported

    def attach(self, rtvi: RTVIProcessor) -> None:
        """Send through ``rtvi`` (the pipeline worker's)."""
        self._rtvi = rtvi

    async def on_push_frame(self, data: FramePushed) -> None:
        """Record the frame; when the bot starts answering a turn, send that turn's latency."""
        await self.recorder.on_push_frame(data)
        if not data.first_push or not isinstance(data.frame, BotStartedSpeakingFrame) or self._rtvi is None:
            return
        answered = [t for t in self.recorder.turns if t.bot_started_s is not None and t.voice_to_voice_ms is not None]
        for number, turn in enumerate(answered, start=1):
            if id(turn) in self._sent:
                continue
            self._sent.add(id(turn))
            message = turn_message(number, turn)
            logger.debug(f"Turn {number}: voice-to-voice {message['voice_to_voice_ms']} ms")
            await self._rtvi.send_server_message(message)
