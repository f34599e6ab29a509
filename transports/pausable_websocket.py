"""pipecat's FastAPI WebSocket transport, with an output that can pause and resume (pause-then-resume barge-in)
and an input that hands the caller's audio straight on.

pipecat's websocket output already paces audio in real time, so the far end (Twilio) buffers little.
A pause stops sending at once and clears what the far end has buffered (its serializer turns the
``InterruptionFrame`` into Twilio's ``clear``); the queued audio waits here and plays on resume.

pipecat's input queues each audio frame for a task that, with no audio filter, only pushes it on: a
queue, a task switch and a fresh ``wait_for`` timer per 20 ms frame, a noticeable share of a phone call's
CPU. Here the receiving task pushes the audio on itself, optionally in longer chunks: every frame costs the
pipeline the same whatever its length, so Twilio's 20 ms frames handed on two at a time cost a phone call
less CPU, for a little more VAD latency. bench/twilio_load.py measures both changes (two servers side by
side); figures in bench/README.md.

pipecat's output paces audio on a clock that it restarts whenever a frame goes out late: each late
wake-up of the event loop then delays the rest of the reply for good, and calls that were late together
stay in step, so their frames fall due at the same instant from then on. Here a late frame only puts
the next ones out sooner, back on the reply's clock; the clock restarts only after a real break (a
pause, the end of a reply).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pipecat.frames.frames import Frame, InputAudioRawFrame, InterruptionFrame, OutputAudioRawFrame, StopFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketInputTransport,
    FastAPIWebsocketOutputTransport,
    FastAPIWebsocketTransport,
)

from vivavoce.transports.output_pause import OutputPause

RESTART_CLOCK_AFTER_SECS = 0.1
"""An output this far behind its clock has had a break, not a late wake-up: it starts a new clock."""


class DirectAudioWebsocketInputTransport(FastAPIWebsocketInputTransport):
    """The websocket input, pushing audio on from the receiving task (in chunks of ``chunk_secs`` or more)
    when nothing filters it."""

    def __init__(self, *args: Any, chunk_secs: float = 0.0, **kwargs: Any):
        """See :class:`FastAPIWebsocketInputTransport`; ``chunk_secs`` 0 pushes each frame as it comes."""
        super().__init__(*args, **kwargs)
        self._chunk_secs = chunk_secs
        self._held: list[InputAudioRawFrame] = []

    async def push_audio_frame(self, frame: InputAudioRawFrame) -> None:
        """Push ``frame`` downstream now, or with the next ones once they make a chunk; with an audio
        filter, queue it as pipecat does."""
        params = self._params
        if params.audio_in_filter is not None or not params.audio_in_passthrough:
            await super().push_audio_frame(frame)
        elif params.audio_in_enabled and not self._paused:
            if self._chunk_secs > 0:
                self._held.append(frame)
                held_bytes = sum(len(f.audio) for f in self._held)
                # Within 5 ms: a stream resampler's first frame comes a few samples short.
                if held_bytes < (self._chunk_secs - 0.005) * frame.sample_rate * frame.num_channels * 2:
                    return
                if len(self._held) > 1:
                    frame = InputAudioRawFrame(
                        audio=b"".join(f.audio for f in self._held),
                        sample_rate=frame.sample_rate,
                        num_channels=frame.num_channels,
                    )
                self._held = []
            await self.push_frame(frame)

    async def pause(self, frame: StopFrame) -> None:
        """Pause as pipecat does, which drops the audio queued so far: so does the chunk being made."""
        self._held = []
        await super().pause(frame)


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

    async def _write_audio_sleep(self) -> None:
        """Wait until the next frame is due on this reply's clock (see the module docstring)."""
        behind = time.monotonic() - self._next_send_time
        if behind > RESTART_CLOCK_AFTER_SECS:
            self._next_send_time = time.monotonic() + self._send_interval
            return
        if behind < 0:
            await asyncio.sleep(-behind)
        self._next_send_time += self._send_interval


class PausableFastAPIWebsocketTransport(FastAPIWebsocketTransport):
    """pipecat's ``FastAPIWebsocketTransport`` whose output can pause and whose input hands audio straight on
    (see the module docstring)."""

    def __init__(self, *args: Any, audio_in_chunk_secs: float = 0.0, **kwargs: Any):
        """See :class:`FastAPIWebsocketTransport`; the input hands audio on in chunks of ``audio_in_chunk_secs``
        (0: each frame as it comes)."""
        super().__init__(*args, **kwargs)
        self._input = DirectAudioWebsocketInputTransport(
            self, self._client, self._params, name=self._input_name, chunk_secs=audio_in_chunk_secs
        )
        self._output = PausableWebsocketOutputTransport(self, self._client, self._params, name=self._output_name)
