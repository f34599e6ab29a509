"""The phone transport's input hands audio on in chunks, losing none."""

from __future__ import annotations

import numpy as np
import pytest
from pipecat.frames.frames import InputAudioRawFrame
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams

from vivavoce.transports.pausable_websocket import DirectAudioWebsocketInputTransport

FRAME = 320  # 20 ms at 8 kHz, 16-bit


def input_transport(chunk_secs: float) -> tuple[DirectAudioWebsocketInputTransport, list[InputAudioRawFrame]]:
    transport = DirectAudioWebsocketInputTransport(
        None, None, FastAPIWebsocketParams(audio_in_enabled=True), chunk_secs=chunk_secs
    )
    pushed: list[InputAudioRawFrame] = []

    async def push_frame(frame, direction=None):
        pushed.append(frame)

    transport.push_frame = push_frame
    return transport, pushed


def twenty_ms_frames(count: int) -> list[InputAudioRawFrame]:
    pcm = np.arange(count * FRAME // 2, dtype=np.int16)
    return [
        InputAudioRawFrame(audio=pcm[i * FRAME // 2 : (i + 1) * FRAME // 2].tobytes(), sample_rate=8000, num_channels=1)
        for i in range(count)
    ]


@pytest.mark.parametrize("chunk_secs, frames_per_push", [(0.0, 1), (0.02, 1), (0.04, 2), (0.06, 3)])
async def test_audio_is_handed_on_in_chunks_in_order_and_whole(chunk_secs: float, frames_per_push: int) -> None:
    transport, pushed = input_transport(chunk_secs)
    frames = twenty_ms_frames(12)
    for frame in frames:
        await transport.push_audio_frame(frame)
    assert [len(f.audio) for f in pushed] == [FRAME * frames_per_push] * (12 // frames_per_push)
    assert b"".join(f.audio for f in pushed) == b"".join(f.audio for f in frames)
    assert all(f.sample_rate == 8000 and f.num_channels == 1 for f in pushed)


async def test_a_paused_input_drops_audio_and_does_not_hold_it() -> None:
    transport, pushed = input_transport(0.04)
    transport._paused = True
    for frame in twenty_ms_frames(4):
        await transport.push_audio_frame(frame)
    assert pushed == [] and transport._held == []
