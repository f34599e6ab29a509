"""The file transport: reading WAVs, and an output track on the input's timeline."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import soundfile
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from vivavoce.transports.file import FileTransport
from vivavoce.wav import AudioFileError, InputAudio, read_wav, write_wav

PIPELINE_RATE = 16000

# --- read_wav ---------------------------------------------------------------------------------


def test_read_stereo_float_wav_as_mono_int16(tmp_path):
    rate, frames = 44100, 4410
    left = np.full(frames, 0.5, dtype=np.float32)
    right = np.full(frames, 0.1, dtype=np.float32)
    right[:100] = -0.5  # mean 0 there
    path = tmp_path / "stereo.wav"
    soundfile.write(str(path), np.stack([left, right], axis=1), rate, subtype="FLOAT")

    audio = read_wav(path)
    assert audio.sample_rate == 44100
    assert audio.channels == 2
    assert audio.pcm.dtype == np.int16
    assert audio.pcm.ndim == 1
    assert len(audio.pcm) == frames
    assert audio.duration_secs == pytest.approx(0.1)
    assert audio.path == path
    assert np.all(np.abs(audio.pcm[:100]) <= 1)
    assert np.all(np.abs(audio.pcm[100:].astype(int) - round(0.3 * 32767)) <= 1)


def test_read_clipping_float_wav(tmp_path):
    path = tmp_path / "loud.wav"
    soundfile.write(str(path), np.array([2.0, -2.0, 0.0], dtype=np.float32), 8000, subtype="FLOAT")
    audio = read_wav(path)
    assert audio.pcm.tolist() == [32767, -32768, 0]


def test_read_int16_mono_round_trips(tmp_path):
    pcm = (np.sin(np.arange(1600) / 5) * 10000).astype(np.int16)
    path = tmp_path / "sub" / "mono.wav"
    write_wav(path, pcm, 16000)
    audio = read_wav(path)
    assert audio.sample_rate == 16000
    assert audio.channels == 1
    assert np.array_equal(audio.pcm, pcm)


def test_read_text_file_is_an_audio_file_error(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("not audio at all\n")
    with pytest.raises(AudioFileError) as info:
        read_wav(path)
    assert str(path) in str(info.value)


def test_read_empty_wav_is_an_audio_file_error(tmp_path):
    path = tmp_path / "empty.wav"
    soundfile.write(str(path), np.zeros(0, dtype=np.int16), 16000, subtype="PCM_16")
    with pytest.raises(AudioFileError, match="empty"):
        read_wav(path)


def test_read_missing_file_is_an_audio_file_error(tmp_path):
    with pytest.raises(AudioFileError, match="no such file"):
        read_wav(tmp_path / "missing.wav")


def test_read_directory_is_an_audio_file_error(tmp_path):
    with pytest.raises(AudioFileError):
        read_wav(tmp_path)


# --- the transport's timeline, without a pipeline ---------------------------------------------


def _audio(pcm: np.ndarray, rate: int) -> InputAudio:
    return InputAudio(path=None, pcm=pcm.astype(np.int16), sample_rate=rate, channels=1)  # type: ignore[arg-type]


def test_output_track_defaults_to_silence_as_long_as_the_input():
    transport = FileTransport(_audio(np.ones(800), 8000))
    assert transport.output_sample_rate == 8000
    track = transport.output_pcm()
    assert len(track) == 800
    assert not track.any()


def test_place_output_uses_the_input_origin():
    transport = FileTransport(_audio(np.zeros(1000), 1000))
    transport.mark_origin(clock_ns=5_000_000_000)
    origin = transport._origin_monotonic
    block = np.full(100, 7, dtype=np.int16).tobytes()
    transport.place_output(block, 1000, origin + 0.25)
    transport.place_output(block, 1000, origin + 0.95)  # runs past the input's end
    track = transport.output_pcm()
    assert len(track) == 1050
    assert not track[:250].any()
    assert (track[250:350] == 7).all()
    assert not track[350:950].any()
    assert (track[950:1050] == 7).all()
    assert transport.timeline_secs(5_500_000_000) == pytest.approx(0.5)


# --- the transport in a pipeline --------------------------------------------------------------


def _convert_rate(audio: bytes, in_rate: int, out_rate: int) -> bytes:
    """Resample one chunk by linear interpolation: no look-ahead, so no added latency."""
    if in_rate == out_rate:
        return audio
    samples = np.frombuffer(audio, dtype=np.int16).astype(np.float64)
    positions = np.arange(len(samples) * out_rate // in_rate) * in_rate / out_rate
    return np.interp(positions, np.arange(len(samples)), samples).astype(np.int16).tobytes()


class Echo(FrameProcessor):
    """Plays back what it hears, instantly: each input chunk becomes an output chunk.

    The output chunk has the input frame's rate, or ``out_rate`` when given.
    """

    def __init__(self, out_rate: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self._out_rate = out_rate

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            rate = self._out_rate or frame.sample_rate
            audio = _convert_rate(frame.audio, frame.sample_rate, rate)
            await self.push_frame(OutputAudioRawFrame(audio=audio, sample_rate=rate, num_channels=1), direction)
        else:
            await self.push_frame(frame, direction)


TONE_AMPLITUDE = 12000


def _tone_burst(rate: int, *, lead_secs: float, tone_secs: float, tail_secs: float) -> np.ndarray:
    lead = np.zeros(int(lead_secs * rate))
    t = np.arange(int(tone_secs * rate)) / rate
    tone = TONE_AMPLITUDE * np.sin(2 * np.pi * 440 * t)
    tail = np.zeros(int(tail_secs * rate))
    return np.concatenate([lead, tone, tail]).astype(np.int16)


def _onset(pcm: np.ndarray) -> int:
    """First sample of the burst: where the signal first exceeds half the tone's amplitude."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > TONE_AMPLITUDE // 2)
    assert len(loud), "no tone in the track"
    return int(loud[0])


def _envelope_lag(reference: np.ndarray, other: np.ndarray, rate: int, max_lag_secs: float) -> float:
    """Lag (s) of ``other`` behind ``reference``, by cross-correlating their envelopes."""
    window = max(1, rate // 200)  # 5 ms
    kernel = np.ones(window) / window

    def envelope(x: np.ndarray) -> np.ndarray:
        return np.convolve(np.abs(x.astype(np.float64)), kernel, mode="same")

    a, b = envelope(reference), envelope(other)
    n = min(len(a), len(b))
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    max_lag = int(max_lag_secs * rate)
    lags = np.arange(-max_lag, max_lag + 1)
    scores = [np.dot(a[max(0, -k) : n - max(0, k)], b[max(0, k) : n - max(0, -k)]) for k in lags]
    return float(lags[int(np.argmax(scores))]) / rate


async def _run_echo(audio: InputAudio, *, echo_at_output_rate: bool = False) -> FileTransport:
    transport = FileTransport(audio, pipeline_sample_rate=PIPELINE_RATE)
    echo = Echo(out_rate=transport.output_sample_rate if echo_at_output_rate else None)
    pipeline = Pipeline([transport.input(), echo, transport.output()])
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=PIPELINE_RATE, audio_out_sample_rate=transport.output_sample_rate),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )
    finished = []

    @transport.event_handler("on_input_finished")
    async def _on_input_finished(_transport: FileTransport) -> None:
        finished.append(transport.timeline_now())
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.wait_for(runner.run(), timeout=15)
    assert len(finished) == 1, "on_input_finished fired once"
    assert finished[0] == pytest.approx(audio.duration_secs, abs=0.25)
    return transport


def _assert_aligned(pcm: np.ndarray, transport: FileTransport, rate: int) -> None:
    assert transport.output_sample_rate == rate
    out = transport.output_pcm()
    assert out.dtype == np.int16
    assert len(out) >= len(pcm)

    # The burst comes back, at about its level, where it was in the input.
    onset_in, onset_out = _onset(pcm), _onset(out)
    assert abs(onset_out - onset_in) / rate <= 0.060, f"onset {onset_in} in, {onset_out} out at {rate} Hz"
    lag = _envelope_lag(pcm, out[: len(pcm)], rate, max_lag_secs=0.2)
    assert abs(lag) <= 0.060, f"envelope lag {lag * 1000:.0f} ms"
    peak = np.abs(out.astype(np.int32)).max()
    assert 0.7 * TONE_AMPLITUDE <= peak <= 1.3 * TONE_AMPLITUDE
    # Silence before the burst stays (nearly) silent.
    quiet_until = max(0, onset_in - int(0.1 * rate))
    assert np.abs(out[:quiet_until].astype(np.int32)).max(initial=0) < 500


def _burst(rate: int) -> np.ndarray:
    return _tone_burst(rate, lead_secs=0.4, tone_secs=0.25, tail_secs=0.3)


async def test_echo_is_aligned_with_the_input_16k():
    """Pipeline and output at 16 kHz: the echo of input sample i lands at output sample i (+ one chunk)."""
    pcm = _burst(16000)
    transport = await _run_echo(_audio(pcm, 16000))
    _assert_aligned(pcm, transport, 16000)


async def test_echo_is_aligned_with_the_input_8k():
    """An 8 kHz recording: fed at 16 kHz, the echo (made at 8 kHz) is recorded at 8 kHz, still aligned."""
    pcm = _burst(8000)
    transport = await _run_echo(_audio(pcm, 8000), echo_at_output_rate=True)
    _assert_aligned(pcm, transport, 8000)


@pytest.mark.xfail(
    strict=True,
    reason="known limitation: audio reaching FileOutputTransport at another rate (16 kHz here) is "
    "resampled by pipecat's soxr VHQ stream resampler, which releases 16k->8k audio in ~100 ms "
    "blocks, so the output track lags the input by ~140 ms",
)
async def test_echo_at_pipeline_rate_is_aligned_with_an_8k_input():
    pcm = _burst(8000)
    transport = await _run_echo(_audio(pcm, 8000))
    _assert_aligned(pcm, transport, 8000)


# --- interruptions -----------------------------------------------------------------------------


class BotSpeech(FrameProcessor):
    """Records the bot's started/stopped speaking events (they come back upstream from the output)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.events: list[tuple[str, float]] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        spoken = isinstance(frame, (BotStartedSpeakingFrame, BotStoppedSpeakingFrame))
        if spoken and direction == FrameDirection.UPSTREAM:
            self.events.append((type(frame).__name__, time.monotonic()))
        await self.push_frame(frame, direction)


async def test_audio_overtaken_by_an_interruption_is_not_played():
    """pipecat lets the interruption overtake the answer's audio queued just ahead of it; that audio must
    neither play nor mark the bot speaking again (nothing would end it for 3 s)."""
    rate = 16000
    transport = FileTransport(_audio(np.zeros(int(1.6 * rate)), rate), pipeline_sample_rate=rate)
    speech = BotSpeech()
    worker = PipelineWorker(
        Pipeline([transport.input(), speech, transport.output()]),
        params=PipelineParams(audio_in_sample_rate=rate, audio_out_sample_rate=rate),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )
    loud = (np.full(int(0.08 * rate), 8000, dtype=np.int16)).tobytes()  # 80 ms, as Moshi sends

    async def answer_then_barge_in() -> float:
        await asyncio.sleep(0.3)
        await worker.queue_frame(TTSStartedFrame(context_id="answer"))
        for _ in range(4):
            await worker.queue_frame(TTSAudioRawFrame(loud, rate, 1, context_id="answer"))
            await asyncio.sleep(0.08)
        # The last piece of the answer and the interruption, back to back: the interruption overtakes it.
        await worker.queue_frame(TTSAudioRawFrame(loud, rate, 1, context_id="answer"))
        interrupted_at = transport.timeline_now()
        await worker.queue_frame(InterruptionFrame())
        return interrupted_at

    @transport.event_handler("on_input_finished")
    async def _on_input_finished(_transport: FileTransport) -> None:
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    driving = asyncio.create_task(answer_then_barge_in())
    await asyncio.wait_for(runner.run(), timeout=15)
    interrupted_at = driving.result()

    assert [name for name, _ in speech.events] == ["BotStartedSpeakingFrame", "BotStoppedSpeakingFrame"]
    track = transport.output_pcm()
    assert np.abs(track[: int(interrupted_at * rate)]).max() > 4000  # the answer played until then
    # Then silence, but for the frame already playing (one 20 ms chunk).
    assert not track[int((interrupted_at + 0.05) * rate) :].any()
