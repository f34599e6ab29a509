"""pipecat's FastAPI WebSocket transport, with an output that can pause and resume (pause-then-resume barge-in)
and an input that hands the caller's audio straight on.

pipecat's websocket output already paces audio in real time, so the far end (Twilio) buffers little.
A pause stops sending at once and clears what the far end has buffered (its serializer turns the
``InterruptionFrame`` into Twilio's ``clear``); the queued audio waits here and plays on resume.

pipecat's input queues each audio frame for a task that, with no audio filter, only pushes it on: a
queue, a task switch and a fresh ``wait_for`` timer per 20 ms frame, about a tenth of a phone call's CPU.
"""

from __future__ import annotations

from typing import Any

from pipecat.frames.frames import Frame, InputAudioRawFrame, InterruptionFrame, OutputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketInputTransport,
    FastAPIWebsocketOutputTransport,
    FastAPIWebsocketTransport,
)

from vivavoce.transports.output_pause import OutputPause


class DirectAudioWebsocketInputTransport(FastAPIWebsocketInputTransport):
    """The websocket input, pushing audio frames on from the receiving task when nothing filters them."""

    async def push_audio_frame(self, frame: InputAudioRawFrame) -> None:
        """Push ``frame`` downstream now; with an audio filter, queue it as pipecat does."""
        params = self._params
        if params.audio_in_filter is not None or not params.audio_in_passthrough:
            await super().push_audio_frame(frame)
        elif params.audio_in_enabled and not self._paused:
            await self.push_frame(frame)


class PausableWebsocketOutputTransport(FastAPIWebsocketOutputTransport):
    """The websocket output, honouring ``BotOutputPauseFrame``."""

    def __init__(self, *args: Any, **kwargs: Any):
        """See :class:`FastAPIWebsocketOutputTransport`."""
        super().__init__(*args, **kwargs)
        self._pause = OutputPause(self)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Pause/resume on ``BotOutputPauseFrame``; an interruption drops the frame held by a pause."""
        was_paused = self._pause.paused
        if not self._pause.on_frame(frame):
            await super().process_frame(frame, direction)
        elif self._pause.paused and not was_paused:
            # What the far end already holds must stop too: the serializer sends Twilio's 'clear'.
            await self._write_frame(InterruptionFrame())

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        """Hold the frame while paused; drop it if the pause ended in an interruption, or if an interruption
        overtook it."""
        if self._pause.overtaken(frame):
            return await self._pause.drop_overtaken(frame)
        if self._pause.paused:
            if not await self._pause.may_play():
                return False
            self._next_send_time = 0  # restart the pacing clock after the pause
        return await super().write_audio_frame(frame)


class PausableFastAPIWebsocketTransport(FastAPIWebsocketTransport):
    """pipecat's ``FastAPIWebsocketTransport`` whose output can pause and whose input hands audio straight on
    (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any):
        """See :class:`FastAPIWebsocketTransport`."""
        super().__init__(*args, **kwargs)
        self._input = DirectAudioWebsocketInputTransport(self, self._client, self._params, name=self._input_name)
        self._output = PausableWebsocketOutputTransport(self, self._client, self._params, name=self._output_name)
