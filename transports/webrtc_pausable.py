"""pipecat's SmallWebRTC transport, with an output that can pause and resume (pause-then-resume barge-in).

pipecat's SmallWebRTC output hands each chunk (40 ms by default) to the outgoing audio track and waits
until the track has consumed it, so little audio is ahead of the listener. A pause holds the next chunk
here (the track plays silence meanwhile); the queued audio plays on resume, and an interruption during
the pause drops it, as in :mod:`vivavoce.transports.pausable_websocket`.
"""

from __future__ import annotations

from typing import Any

from pipecat.frames.frames import Frame, OutputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCOutputTransport, SmallWebRTCTransport

from vivavoce.transports.output_pause import OutputPause


class PausableSmallWebRTCOutputTransport(SmallWebRTCOutputTransport):
    """The SmallWebRTC output, honouring ``BotOutputPauseFrame``."""

    def __init__(self, *args: Any, **kwargs: Any):
        """See :class:`SmallWebRTCOutputTransport`."""
        super().__init__(*args, **kwargs)
        self._pause = OutputPause(self)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Pause/resume on ``BotOutputPauseFrame``; every other frame goes to pipecat's output."""
        if not self._pause.on_frame(frame):
            await super().process_frame(frame, direction)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        """Hold the frame while paused; drop it if the pause ended in an interruption, or if an interruption
        overtook it."""
        if self._pause.overtaken(frame):
            return await self._pause.drop_overtaken(frame)
        if not await self._pause.may_play():
            return False
        return await super().write_audio_frame(frame)


class PausableSmallWebRTCTransport(SmallWebRTCTransport):
    """pipecat's ``SmallWebRTCTransport`` whose output can pause (see the module docstring)."""

    def output(self) -> PausableSmallWebRTCOutputTransport:
        """The output processor (created once)."""
        if not self._output:
            self._output = PausableSmallWebRTCOutputTransport(self._client, self._params, name=self._output_name)
        return self._output
