"""Where audio stops travelling down the pipeline.

pipecat forwards every 20 ms audio frame through every later processor to the pipeline's end, each
hop a queue and a task switch. The caller's audio is of no use past the last processor that listens to
it, and the bot's audio none past the output transport (which pushes each frame on once it is played),
so it ends there: with dozens of calls per process these hops were most of a call's CPU.
"""

from __future__ import annotations

from typing import Any

from pipecat.frames.frames import Frame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor


class AudioEnd(FrameProcessor):
    """Consumes downstream frames of one audio type; forwards everything else, at once.

    It runs in the pushing processor's task (pipecat's direct mode): it only drops or forwards, so a
    queue and a task of its own would cost more than its work.
    """

    def __init__(self, frame_type: type[Frame], **kwargs: Any):
        """End ``frame_type`` frames (and their subclasses) travelling downstream."""
        super().__init__(enable_direct_mode=True, **kwargs)
        self._frame_type = frame_type

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Drop downstream ``frame_type`` frames; pass on the rest."""
        await super().process_frame(frame, direction)
        if isinstance(frame, self._frame_type) and direction == FrameDirection.DOWNSTREAM:
            return
        await self.push_frame(frame, direction)
