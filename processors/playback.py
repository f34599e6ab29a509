"""Answer every user turn with one recorded reply: IVR-style prompts, and load tests of a transport.

The reply is synthesised once per process with Piper (``text``) or read from a WAV (``audio``), and
resampled once to the pipeline's output rate. Piper's sampling noise is off, so every process (and a
benchmark counting the frames that should arrive) gets the same reply, to the sample. It is pushed as
TTS audio, so the output transport marks the bot as speaking and drops the rest of it when the user
barges in.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from pipecat.audio.utils import create_file_resampler
from pipecat.frames.frames import (
    Frame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from vivavoce.model_store import models

if TYPE_CHECKING:
    from vivavoce.build_context import BuildContext
    from vivavoce.processors.catalog import PlaybackConfig

CHUNK_SECS = 0.5
"""The reply is pushed in pieces this long, as a streaming TTS pushes its audio; the output transport
paces it out in 20 ms frames. (20 ms pieces cost each call extra queue, task and observer hand-offs per
frame, and so more CPU per phone call: measured with bench/twilio_load.py, two servers side by side; figures
in bench/README.md.)"""


def recorded_reply(text: str | None, audio: str | None, voice: str) -> tuple[bytes, int]:
    """The reply as 16-bit mono PCM and its rate, made once per process."""
    if audio:
        from vivavoce.wav import read_wav

        recording = read_wav(audio)
        return recording.pcm.tobytes(), recording.sample_rate

    def synthesise() -> tuple[bytes, int]:
        from piper import SynthesisConfig

        from vivavoce.processors.piper import load_voice

        piper = load_voice(voice)
        same_every_time = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
        pcm = b"".join(chunk.audio_int16_bytes for chunk in piper.synthesize(text or "", syn_config=same_every_time))
        return pcm, piper.config.sample_rate

    return models.get(("playback", text, voice), synthesise, label="recorded reply")


class PlaybackReplyProcessor(FrameProcessor):
    """Plays the same reply each time the user's turn ends."""

    def __init__(self, *, pcm: bytes, sample_rate: int, **kwargs: Any):
        """Reply with ``pcm`` (16-bit mono at ``sample_rate``)."""
        super().__init__(**kwargs)
        self._source = (pcm, sample_rate)
        self._reply = pcm
        self._rate = sample_rate

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Forward everything; after each user turn, push the reply."""
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            pcm, rate = self._source
            self._rate = self.processor_setup.audio_out_sample_rate
            self._reply = await create_file_resampler().resample(pcm, rate, self._rate) if rate != self._rate else pcm
        await self.push_frame(frame, direction)
        if isinstance(frame, UserStoppedSpeakingFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._play()

    async def _play(self) -> None:
        context_id = str(uuid.uuid4())
        await self.push_frame(TTSStartedFrame(context_id=context_id))
        step = int(self._rate * CHUNK_SECS) * 2
        for start in range(0, len(self._reply), step):
            chunk = self._reply[start : start + step]
            await self.push_frame(TTSAudioRawFrame(chunk, self._rate, 1, context_id=context_id))
        await self.push_frame(TTSStoppedFrame(context_id=context_id))


def create(config: PlaybackConfig, context: BuildContext) -> PlaybackReplyProcessor:
    """Factory for the ``playback`` kind."""
    pcm, rate = recorded_reply(config.text, config.audio, config.voice)
    return PlaybackReplyProcessor(pcm=pcm, sample_rate=rate)


def preload(config: PlaybackConfig) -> None:
    """Make the reply before the first session."""
    recorded_reply(config.text, config.audio, config.voice)
