"""What an output transport may play: pausing (pause-then-resume barge-in), and audio that an interruption
has overtaken. Shared by our output transports.

An interruption can overtake the interrupted answer's audio in two places, and that audio would then
play after the interruption, its ``TTSAudioRawFrame`` marking the bot speaking again with nothing to end
it for 3 s (pipecat's fallback), which hides the start of the next answer:

- pipecat hands system frames to a processor ahead of the data frames already waiting in its input
  queue, and an interruption clears only the frames already past that queue;
- the output's audio task may have taken a frame off its queue, not yet handled, when the interruption
  clears that queue.

pipecat's frame ids grow with creation, so "made before the last interruption" is what marks such audio.
"""

from __future__ import annotations

import asyncio

from loguru import logger
from pipecat.frames.frames import Frame, InterruptionFrame, OutputAudioRawFrame, TTSAudioRawFrame, TTSStoppedFrame
from pipecat.processors.frame_processor import FrameProcessor

from vivavoce.frames import BotOutputPauseFrame


class OutputPause:
    """Pause state of one output transport, and the audio it must no longer play.

    The transport calls :meth:`on_frame` for every frame (it consumes ``BotOutputPauseFrame`` and
    overtaken audio). Before writing each audio frame it checks :meth:`overtaken` (and then calls
    :meth:`drop_overtaken` instead of writing) and awaits :meth:`may_play`: while paused, the writing
    (and so the transport's queue) waits; an interruption during the pause drops the held frame.
    """

    def __init__(self, output: FrameProcessor) -> None:
        """Start playing; ``output`` is the output transport this state belongs to."""
        self._output = output
        self._playing = asyncio.Event()
        self._playing.set()
        self._drop_held = False
        self._interrupted_at_id = -1
        self.interruptions = 0

    @property
    def paused(self) -> bool:
        """Whether audio is held now."""
        return not self._playing.is_set()

    def overtaken(self, frame: OutputAudioRawFrame) -> bool:
        """Whether ``frame`` is interruptible audio made before the last interruption: it must not play."""
        return frame.interruptible and frame.id < self._interrupted_at_id

    async def drop_overtaken(self, frame: OutputAudioRawFrame) -> bool:
        """Drop ``frame``, taken for writing just before the interruption; returns False (not written).

        pipecat has already marked the bot speaking for it: a ``TTSStoppedFrame`` is its own way to end that.
        """
        self._log_drop(frame)
        if isinstance(frame, TTSAudioRawFrame):
            await self._output.queue_frame(TTSStoppedFrame(context_id=frame.context_id))
        return False

    def _log_drop(self, frame: OutputAudioRawFrame) -> None:
        logger.debug(f"{self._output}: dropping {frame}, made before the interruption that overtook it")

    def on_frame(self, frame: Frame) -> bool:
        """Update from ``frame``; True if it was consumed (a pause/resume, or overtaken audio), not forwarded."""
        if isinstance(frame, OutputAudioRawFrame):
            if self.overtaken(frame):
                self._log_drop(frame)
                return True
            return False
        if isinstance(frame, BotOutputPauseFrame):
            if frame.paused:
                self._playing.clear()
            else:
                self._playing.set()
            return True
        if isinstance(frame, InterruptionFrame):
            self.interruptions += 1  # a frame waiting for its turn to play is dropped (see may_play users)
            self._interrupted_at_id = max(self._interrupted_at_id, frame.id)
            if self.paused:
                self._drop_held = True
                self._playing.set()
        return False

    async def may_play(self) -> bool:
        """Wait while paused; False if the held frame must be dropped (the pause ended in an interruption)."""
        if not self.paused:
            return True
        await self._playing.wait()
        if self._drop_held:
            self._drop_held = False
            return False
        return True
