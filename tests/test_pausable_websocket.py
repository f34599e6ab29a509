"""The phone transport's input hands audio on in chunks, losing none; its output keeps each reply on one clock."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from pipecat.frames.frames import InputAudioRawFrame, StopFrame
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams

from vivavoce.transports import pausable_websocket
from vivavoce.transports.pausable_websocket import (
    DirectAudioWebsocketInputTransport,
    PausableWebsocketOutputTransport,
)

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


async def test_a_short_first_frame_does_not_shift_the_chunks() -> None:
    """A stream resampler's first frame comes a few samples short; the chunks still pair Twilio's frames."""
    transport, pushed = input_transport(0.04)
    frames = twenty_ms_frames(6)
    frames[0] = InputAudioRawFrame(audio=frames[0].audio[8:], sample_rate=8000, num_channels=1)
    for frame in frames:
        await transport.push_audio_frame(frame)
    assert [len(f.audio) for f in pushed] == [2 * FRAME - 8, 2 * FRAME, 2 * FRAME]


async def test_a_paused_input_drops_audio_and_the_chunk_it_was_making(monkeypatch) -> None:
    transport, pushed = input_transport(0.04)
    # pipecat's pause restarts its queue task, which this transport (never started) does not have.
    monkeypatch.setattr(transport, "_cancel_audio_task", lambda: asyncio.sleep(0))
    monkeypatch.setattr(transport, "_create_audio_task", lambda: None)
    frames = twenty_ms_frames(5)
    await transport.push_audio_frame(frames[0])  # half a chunk, held
    await transport.pause(StopFrame())
    await transport.push_audio_frame(frames[1])  # dropped while paused
    transport._paused = False
    for frame in frames[2:]:
        await transport.push_audio_frame(frame)
    assert [f.audio for f in pushed] == [frames[2].audio + frames[3].audio]


class FakeClock:
    """Stands in for time.monotonic and asyncio.sleep: sleeping advances it, and nothing else does."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(pausable_websocket.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(pausable_websocket.asyncio, "sleep", fake.sleep)
    return fake


def output_transport() -> PausableWebsocketOutputTransport:
    transport = PausableWebsocketOutputTransport(None, None, FastAPIWebsocketParams(audio_out_enabled=True))
    transport._send_interval = 0.02
    return transport


async def send_times(
    transport: PausableWebsocketOutputTransport, clock: FakeClock, count: int, *, late: dict[int, float]
) -> list[float]:
    """When each of ``count`` frames goes out; before frame i the event loop wakes ``late[i]`` seconds late."""
    times = []
    for i in range(count):
        clock.now += late.get(i, 0.0)
        times.append(round(clock.now, 6))
        await transport._write_audio_sleep()
    return times


async def test_a_late_frame_puts_the_next_ones_out_sooner_back_on_the_clock(clock: FakeClock) -> None:
    transport = output_transport()
    start = clock.now
    times = await send_times(transport, clock, 6, late={2: 0.03})
    # As in pipecat, the first two frames go out at once (the far end's 20 ms of lead), then one every
    # 20 ms. Frame 2 went out 30 ms late, with frame 3 due by then; frames 4 and 5 are back on the
    # clock (60, 80 ms), where pipecat's restarted clock would send them 10 ms late for good (70, 90 ms).
    assert times == [round(start + t, 6) for t in (0, 0, 0.05, 0.05, 0.06, 0.08)]


async def test_after_a_break_the_clock_starts_again(clock: FakeClock) -> None:
    transport = output_transport()
    first = await send_times(transport, clock, 4, late={})
    clock.now += 1.0  # the reply ended; the next one starts a second later
    second = await send_times(transport, clock, 4, late={})
    assert [round(t - first[0], 6) for t in first] == [round(t - second[0], 6) for t in second] == [0, 0, 0.02, 0.04]
