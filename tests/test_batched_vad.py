"""The batched Silero VAD decides exactly as pipecat's own analyzer, for many sessions at once."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soxr
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams, VADState

from vivavoce.batched_vad import BatchedSileroVADAnalyzer, Decimator, SileroBatcher
from vivavoce.botfile.schema import VADConfig
from vivavoce.builder import vad_analyzer, vad_model_sample_rate
from vivavoce.packaged_models import speech_sample
from vivavoce.testing.conversation_eval import whisper_words, word_alone
from vivavoce.testing.phone_line import through_phone_line
from vivavoce.testing.real_speech import utterances
from vivavoce.wav import read_wav

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
    reference, batched = (
        SileroVADAnalyzer(params=PARAMS),
        BatchedSileroVADAnalyzer(params=PARAMS, batcher=SileroBatcher()),
    )
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
        await decisions(
            BatchedSileroVADAnalyzer(params=PARAMS, batcher=SileroBatcher()), frames(p, sample_rate), sample_rate
        )
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
        *[
            decisions(BatchedSileroVADAnalyzer(params=PARAMS, batcher=batcher), frames(p, sample_rate), sample_rate)
            for p in inputs
        ]
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
    got = await decisions(
        BatchedSileroVADAnalyzer(params=gated, batcher=SileroBatcher()), frames(quiet, sample_rate), sample_rate
    )
    assert VADState.SPEAKING not in {s for s, _ in got}


def speech_onsets(states: list[VADState], frame_secs: float = 0.02) -> list[float]:
    """When each stretch of speech was confirmed (QUIET/STARTING -> SPEAKING)."""
    onsets, speaking = [], False
    for i, state in enumerate(states):
        if state == VADState.SPEAKING and not speaking:
            onsets.append(i * frame_secs)
        speaking = state in (VADState.SPEAKING, VADState.STOPPING)
    return onsets


async def test_phone_audio_scored_at_8k_decides_as_at_16k() -> None:
    """On a call's audio, scoring every second sample at 8 kHz finds the same speech, within a window or two."""
    chunks = frames(await through_phone_line(speech(16000)), 16000)
    at_16k = await decisions(BatchedSileroVADAnalyzer(params=PARAMS, batcher=SileroBatcher()), chunks, 16000)
    phone = BatchedSileroVADAnalyzer(
        params=PARAMS, model_sample_rate=8000, narrowband_input=True, batcher=SileroBatcher()
    )
    at_8k = await decisions(phone, chunks, 16000)
    assert phone.scoring_sample_rate == 8000
    wide, narrow = speech_onsets([s for s, _ in at_16k]), speech_onsets([s for s, _ in at_8k])
    assert len(wide) >= 4 and len(narrow) == len(wide)
    assert max(abs(a - b) for a, b in zip(wide, narrow, strict=True)) <= 0.064
    speaking = [
        (a == VADState.SPEAKING) == (b == VADState.SPEAKING) for (a, _), (b, _) in zip(at_16k, at_8k, strict=True)
    ]
    assert np.mean(speaking) >= 0.95


async def test_wideband_audio_scored_at_8k_is_low_passed_first() -> None:
    """model_sample_rate 8000 on 16 kHz audio: speech still found as at 16 kHz; a 6 kHz tone does not fold into
    the band."""
    chunks = frames(speech(16000), 16000)
    at_16k = await decisions(BatchedSileroVADAnalyzer(params=PARAMS, batcher=SileroBatcher()), chunks, 16000)
    at_8k = await decisions(
        BatchedSileroVADAnalyzer(params=PARAMS, model_sample_rate=8000, batcher=SileroBatcher()), chunks, 16000
    )
    assert len(speech_onsets([s for s, _ in at_8k])) == len(speech_onsets([s for s, _ in at_16k])) >= 4

    def rms_after_decimating(hz: int, *, narrowband: bool) -> float:
        decimate, window = Decimator(narrowband=narrowband), np.sin(2 * np.pi * hz * np.arange(512) / 16000)
        for _ in range(3):  # whole cycles per window, so the windows join; the last is past the filter's start-up
            out = decimate(window.astype(np.float32))
        return float(np.sqrt(np.mean(out**2)))

    assert rms_after_decimating(6000, narrowband=False) < 0.007  # > 40 dB down (a unit sine's RMS is 0.707)
    assert rms_after_decimating(1000, narrowband=False) > 0.69
    assert rms_after_decimating(6000, narrowband=True) > 0.69  # unfiltered, it would fold to 2 kHz


def test_scoring_rate_setting() -> None:
    assert vad_model_sample_rate("auto", narrowband_input=True) == 8000
    assert vad_model_sample_rate("auto", narrowband_input=False) == 16000
    assert vad_model_sample_rate(16000, narrowband_input=True) == 16000
    assert vad_model_sample_rate(8000, narrowband_input=False) == 8000
    with pytest.raises(ValueError, match="8000 or 16000"):
        BatchedSileroVADAnalyzer(model_sample_rate=11025, batcher=SileroBatcher())


async def test_a_short_word_said_alone_starts_the_users_turn() -> None:
    # Real short answers from the corpus, each alone between two stretches of silence: Diane's quiet "Hello?"
    # on a phone call (0.33 s of voice) and a reader's "No" and "failed." cut out alone. pipecat's defaults (the
    # loudness gate smoothed over ~0.4 s, 0.2 s of speech to start) never reach "speaking" on any of them.
    corpus = {u.id: u for u in utterances()}
    clips = [corpus["call-01"].pcm]
    for key, text in (("beckett-3", "No"), ("beckett-2", "failed.")):
        words = whisper_words(key, corpus[key].pcm)
        clips.append(word_alone(corpus[key], words, next(i for i, w in enumerate(words) if w.text == text)))
    silence = np.zeros(16000, np.int16)

    async def heard(params: VADParams | VADConfig) -> list[bool]:
        out = []
        for clip in clips:
            analyzer = vad_analyzer(params) if isinstance(params, VADConfig) else SileroVADAnalyzer(params=params)
            states = await decisions(analyzer, frames(np.concatenate([silence, clip, silence]), 16000), 16000)
            out.append(any(state == VADState.SPEAKING for state, _ in states))
        return out

    assert await heard(VADConfig()) == [True, True, True]
    assert await heard(VADParams()) == [False, False, False]
