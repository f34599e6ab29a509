"""Holds an answer written early until the end-of-turn evidence says it may be heard.

The adaptive end of turn (:mod:`vivavoce.end_of_turn`) starts the LLM and the TTS as soon as the user
pauses and their words are transcribed, while Smart Turn and the sentence-end model still judge the pause;
the answer's audio waits here, just before the output transport, until the pause has lasted as long as the
evidence asks. If the user goes on meanwhile, their speech interrupts the bot (pipecat's
``InterruptionFrame``), which cancels the held frame and drops the queue behind it: nothing is heard.
Waiting here rather than in the output keeps pipecat from marking the bot as speaking during the hold.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from loguru import logger
from pipecat.frames.frames import Frame, InterruptionFrame, OutputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from vivavoce.frames import AnswerGateFrame

MAX_HOLD_SECS = 5.0
"""A hold no release came for ends after this long (the strategy always sends one; this is a safety)."""


class AnswerGate(FrameProcessor):
    """Holds the bot's audio (and what follows it, in order) while an answer awaits its verdict.

    Each answer is numbered by the end-of-turn strategy. ``AnswerGateFrame(answer, hold=True)`` holds it;
    ``hold=False`` gives the time it may play (an answer never held is "armed": open, but it can still be
    held until its first audio has passed, e.g. when the user is heard going on). Once an answer's first
    audio has passed, frames about it are ignored: an answer is never cut in the middle here.
    """

    def __init__(self, **kwargs: Any):
        """Create the gate (open)."""
        super().__init__(**kwargs)
        self._answer: int | None = None  # the answer the gate applies to (held or armed)
        self._not_before: float | None = None  # None: held until told
        self._held_since = 0.0
        self._passed = -1  # the last answer whose audio has passed
        self._changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Consume gate frames; hold audio while an answer is held; forward everything."""
        await super().process_frame(frame, direction)
        if isinstance(frame, AnswerGateFrame):
            self._update(frame)
            return
        if isinstance(frame, InterruptionFrame):
            if self._answer is not None:  # the held answer is dropped with the queue: done with it
                self._passed, self._answer = max(self._passed, self._answer), None
            self._changed.set()
        elif isinstance(frame, OutputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._wait_for_release()
            if self._answer is not None:
                self._passed, self._answer = self._answer, None
        await self.push_frame(frame, direction)

    def _update(self, frame: AnswerGateFrame) -> None:
        if frame.answer <= self._passed or (self._answer is not None and frame.answer < self._answer):
            return  # already playing or dropped, or superseded by a later answer
        if frame.hold:
            self._answer, self._not_before, self._held_since = frame.answer, None, time.time()
        else:
            self._answer = frame.answer
            self._not_before = frame.not_before if frame.not_before is not None else time.time()
        self._changed.set()

    async def _wait_for_release(self) -> None:
        while self._answer is not None:
            deadline = self._not_before if self._not_before is not None else self._held_since + MAX_HOLD_SECS
            delay = deadline - time.time()
            if delay <= 0:
                if self._not_before is None:
                    logger.warning(f"{self}: no verdict for answer {self._answer} in {MAX_HOLD_SECS}s; playing it")
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), delay)
            except TimeoutError:
                pass
