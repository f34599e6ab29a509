"""File transport: a WAV in, the bot's audio out as a WAV on the same timeline, both paced in real time.

The input is fed like a live microphone (20 ms chunks on a fixed schedule, then silence for as long
as the conversation goes on), so VAD and turn timing behave as they would live. The output side plays
like a sound card with a one-frame buffer: each frame is placed at the instant it starts playing, so
sample ``i`` of the output WAV is the same instant as sample ``i`` of the input.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from loguru import logger
from pipecat.audio.utils import create_file_resampler
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    OutputAudioRawFrame,
    StartFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

from vivavoce.transports.output_pause import OutputPause
from vivavoce.wav import InputAudio

CHUNK_SECS = 0.02


class FileInputTransport(BaseInputTransport):
    """Feeds the recording into the pipeline in real time, then silence, like an open microphone."""

    def __init__(self, transport: FileTransport, params: TransportParams, **kwargs):
        """Create the input side of ``transport``."""
        super().__init__(params, **kwargs)
        self._transport = transport
        self._feed_task: asyncio.Task | None = None

    async def start(self, frame: StartFrame) -> None:
        """Resample the recording once to the pipeline rate and start feeding it."""
        await super().start(frame)
        await self._transport.prepare(self.sample_rate)
        await self.set_transport_ready(frame)
        if not self._feed_task:
            self._feed_task = self.create_task(self._feed(), name="file-input-feed")

    async def stop(self, frame: EndFrame) -> None:
        """Stop feeding."""
        await self._stop_feeding()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        """Stop feeding."""
        await self._stop_feeding()
        await super().cancel(frame)

    async def _stop_feeding(self) -> None:
        if self._feed_task:
            await self.cancel_task(self._feed_task)
            self._feed_task = None

    async def _feed(self) -> None:
        pcm = self._transport.pipeline_pcm
        chunk = int(self.sample_rate * CHUNK_SECS)
        silence = bytes(chunk * 2)
        origin = self._transport.mark_origin(self.get_clock().get_time())
        index = 0
        finished = False
        while True:
            # A fixed schedule (not cumulative sleeps), so the feed never drifts from the timeline.
            delay = origin + index * CHUNK_SECS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            start = index * chunk
            if start < len(pcm):
                audio = pcm[start : start + chunk].tobytes()
                audio += bytes(chunk * 2 - len(audio))
            else:
                audio = silence
                if not finished:
                    finished = True
                    await self._transport.input_finished()
            await self.push_audio_frame(
                InputAudioRawFrame(audio=audio, sample_rate=self.sample_rate, num_channels=1)
            )
            index += 1


class FileOutputTransport(BaseOutputTransport):
    """Plays the bot's audio into a buffer aligned with the input's timeline; can pause and resume."""

    def __init__(self, transport: FileTransport, params: TransportParams, **kwargs):
        """Create the output side of ``transport``."""
        super().__init__(params, **kwargs)
        self._transport = transport
        self._next_play = 0.0
        self._pause = OutputPause(self)

    async def start(self, frame: StartFrame) -> None:
        """Mark the output ready."""
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Pause/resume on ``BotOutputPauseFrame``; an interruption drops the frame held by a pause."""
        if not self._pause.on_frame(frame):
            await super().process_frame(frame, direction)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        """Wait until the frame's turn to play, then place it on the timeline (a one-frame device buffer).

        Placing it only when it starts playing lets a pause or an interruption that arrives meanwhile
        keep it off the track: the audio stops within the frame already playing.
        """
        if self._pause.overtaken(frame):
            return await self._pause.drop_overtaken(frame)
        if not await self._pause.may_play():
            return False
        interruptions = self._pause.interruptions
        now = time.monotonic()
        starts = max(now, self._next_play)
        if starts > now:
            await asyncio.sleep(starts - now)
        if self._pause.interruptions != interruptions:
            return False  # interrupted while it waited for its turn
        if self._pause.paused:
            if not await self._pause.may_play():
                return False
            starts = max(time.monotonic(), self._next_play)  # resumed: play on from now
        self._transport.place_output(frame.audio, frame.sample_rate, starts)
        self._next_play = starts + len(frame.audio) / 2 / frame.sample_rate
        return True


class FileTransport(BaseTransport):
    """Reads a WAV into the pipeline and records the bot's audio on the same timeline.

    Event handlers: ``on_input_finished(transport)`` fires when the recording has been fed entirely
    (the feed then continues with silence until the pipeline ends).
    """

    def __init__(self, audio: InputAudio, *, pipeline_sample_rate: int = 16000, name: str | None = None):
        """Create a transport for ``audio``; the output is recorded at the input's sample rate."""
        super().__init__(name=name)
        self.audio = audio
        self._params = TransportParams(
            audio_in_enabled=True,
            audio_in_sample_rate=pipeline_sample_rate,
            audio_out_enabled=True,
            audio_out_sample_rate=audio.sample_rate,
            audio_out_10ms_chunks=2,  # 20 ms frames: a pause or an interruption takes effect within 20 ms
        )
        self.pipeline_pcm = np.zeros(0, dtype=np.int16)
        self._origin_monotonic: float | None = None
        self._origin_clock_ns: int | None = None
        self._output = np.zeros(0, dtype=np.int16)
        self._input: FileInputTransport | None = None
        self._output_transport: FileOutputTransport | None = None
        self.input_consumed = asyncio.Event()
        self._register_event_handler("on_input_finished")

    @property
    def output_sample_rate(self) -> int:
        """The rate the pipeline must produce (the input's: output sample i = input sample i)."""
        return self.audio.sample_rate

    def input(self) -> FrameProcessor:
        """The input processor."""
        if not self._input:
            self._input = FileInputTransport(self, self._params, name=self._input_name)
        return self._input

    def output(self) -> FrameProcessor:
        """The output processor."""
        if not self._output_transport:
            self._output_transport = FileOutputTransport(self, self._params, name=self._output_name)
        return self._output_transport

    async def prepare(self, pipeline_rate: int) -> None:
        """Resample the recording to the pipeline rate (once, at this edge)."""
        if len(self.pipeline_pcm):
            return
        resampled = await create_file_resampler().resample(
            self.audio.pcm.tobytes(), self.audio.sample_rate, pipeline_rate
        )
        self.pipeline_pcm = np.frombuffer(resampled, dtype=np.int16)

    def mark_origin(self, clock_ns: int) -> float:
        """Record the instant of input sample 0, on the monotonic clock and on the pipeline clock."""
        self._origin_monotonic = time.monotonic()
        self._origin_clock_ns = clock_ns
        return self._origin_monotonic

    def timeline_secs(self, clock_ns: int) -> float:
        """A pipeline-clock timestamp as seconds on the input's timeline."""
        if self._origin_clock_ns is None:
            return 0.0
        return (clock_ns - self._origin_clock_ns) / 1e9

    def speech_onset(self, fired_s: float, start_secs: float, *, quiet_secs: float = 0.15) -> float:
        """When the speech the VAD fired on at ``fired_s`` began, from the input itself.

        Walks back from the VAD's decision over 10 ms frames until ``quiet_secs`` of quiet; falls back to
        ``fired_s - start_secs`` where the input has no such run (after its end, or mixed with silence).
        """
        pcm, rate = self.pipeline_pcm, self._params.audio_in_sample_rate or 16000
        step = rate // 100
        end = min(len(pcm), int(fired_s * rate)) // step * step
        if end <= 0:
            return max(0.0, fired_s - start_secs)
        frames = pcm[:end].reshape(-1, step).astype(np.float64)
        rms = np.sqrt((frames**2).mean(axis=1))
        loud = rms > max(100.0, 0.1 * float(rms[-int(0.5 * 100) :].max(initial=0.0)))
        quiet_run, onset = 0, None
        for index in range(len(loud) - 1, -1, -1):
            if loud[index]:
                onset, quiet_run = index, 0
            else:
                quiet_run += 1
                if onset is not None and quiet_run * 0.01 >= quiet_secs:
                    break
        return onset * 0.01 if onset is not None else max(0.0, fired_s - start_secs)

    def timeline_now(self) -> float:
        """The current instant on the input's timeline."""
        if self._input is None or self._origin_monotonic is None:
            return 0.0
        return self.timeline_secs(self._input.get_clock().get_time())

    def place_output(self, audio: bytes, sample_rate: int, starts_monotonic: float) -> None:
        """Write bot audio into the output track at the instant it starts playing."""
        if sample_rate != self.audio.sample_rate:
            logger.warning(f"{self}: output at {sample_rate} Hz, expected {self.audio.sample_rate} Hz")
        origin = self._origin_monotonic if self._origin_monotonic is not None else starts_monotonic
        offset = max(0, round((starts_monotonic - origin) * self.audio.sample_rate))
        samples = np.frombuffer(audio, dtype=np.int16)
        end = offset + len(samples)
        if end > len(self._output):
            self._output = np.concatenate([self._output, np.zeros(end - len(self._output), dtype=np.int16)])
        self._output[offset:end] = samples

    def output_pcm(self) -> np.ndarray:
        """The bot's audio, aligned with the input and at least as long as it."""
        length = max(len(self.audio.pcm), len(self._output))
        track = np.zeros(length, dtype=np.int16)
        track[: len(self._output)] = self._output
        return track

    async def input_finished(self) -> None:
        """Called by the input side when the recording has been fed entirely."""
        self.input_consumed.set()
        await self._call_event_handler("on_input_finished")
