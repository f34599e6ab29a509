"""A phone bot with a real LLM context and no models, for tests/test_fleet_agents.py.

Its STT, LLM and TTS are stand-ins that cost next to nothing, so two agent hosts fit on a small machine,
while pipecat's own aggregators build the conversation (user and assistant messages, the greeting) as they
do for a real bot: what the call registry saves and restores is a real ``LLMContext``. Silero VAD (pipecat's,
in the wheel) decides the turns on real speech. ``fleet_agent_bot.yaml`` names these classes by dotted path
(the serving processes get ``tests/`` on ``PYTHONPATH``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import numpy as np
from pipecat.frames.frames import (
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.settings import STTSettings, TTSSettings
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.services.tts_service import TTSService
from pipecat.utils.time import time_now_iso8601

CALLER_WORDS = "I would like to book a table."


class FixedWordsSTT(SegmentedSTTService):
    """Hears :data:`CALLER_WORDS` in every utterance the VAD cuts."""

    def __init__(self, **kwargs: Any):
        super().__init__(ttfs_p99_latency=0.5, settings=STTSettings(model=None, language=None), **kwargs)

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        yield TranscriptionFrame(CALLER_WORDS, "caller", time_now_iso8601(), finalized=True)


class CountingLLM(FrameProcessor):
    """Answers each user turn with how many times the caller has spoken in the conversation (its context):
    a conversation restored on another host goes on counting, a fresh one starts again at one."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not isinstance(frame, LLMContextFrame):
            await self.push_frame(frame, direction)
            return
        heard = sum(1 for m in frame.context.get_messages() if isinstance(m, dict) and m.get("role") == "user")
        await self.push_frame(LLMFullResponseStartFrame())
        await self.push_frame(LLMTextFrame(f"Answer {heard}: you have spoken {heard} times."))
        await self.push_frame(LLMFullResponseEndFrame())


class BeepTTS(TTSService):
    """Says each sentence as a 0.2 s tone (the words go to the context through pipecat's aggregators)."""

    def __init__(self, **kwargs: Any):
        settings = TTSSettings(model=None, voice=None, language=None)
        super().__init__(push_start_frame=True, push_stop_frames=True, settings=settings, **kwargs)

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        t = np.arange(int(self.sample_rate * 0.2)) / self.sample_rate
        tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).tobytes()
        yield TTSAudioRawFrame(tone, self.sample_rate, 1, context_id=context_id)
