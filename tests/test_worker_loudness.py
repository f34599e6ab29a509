"""The workers' loudness normaliser and output framing (workers/common) on synthetic signals.

Both modules need only numpy and soxr, so they are imported here from workers/common in the agent's
environment; pyloudnorm (an independent BS.1770 implementation) is the reference meter.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import soxr

from worker_support import REPO

sys.path.insert(0, str(REPO / "workers" / "common"))

from vivavoce_worker import loudness  # noqa: E402
from vivavoce_worker.framing import Reframer, samples_for_ms  # noqa: E402

try:
    import pyloudnorm
except ImportError:  # a clear failure, never a skip
    pyloudnorm = None

TARGET = -16.0


def reference_lufs(x: np.ndarray, rate: int) -> float:
    if pyloudnorm is None:
        pytest.fail("pyloudnorm is missing from the agent's venv: run `make worker-piper` (make test does)")
    return pyloudnorm.Meter(rate).integrated_loudness(np.asarray(x, dtype=np.float64))


def true_peak_dbtp(x: np.ndarray, rate: int) -> float:
    """Peak of the ideal band-limited 4x interpolation (FFT zero-padding), independent of the limiter's FIR."""
    padded = np.concatenate([np.zeros(256), np.asarray(x, dtype=np.float64), np.zeros(256)])  # no wrap-around
    up = np.fft.irfft(np.fft.rfft(padded), 4 * len(padded)) * 4
    return 20 * np.log10(np.abs(up).max())


def speech_like(rate: int, seconds: float, level: float, seed: int = 0) -> np.ndarray:
    """Noise shaped like speech: syllables (4 Hz) of band-limited noise with pauses and a peaky crest."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    noise = rng.standard_normal(n)
    spectrum = np.fft.rfft(noise)
    f = np.fft.rfftfreq(n, 1 / rate)
    spectrum *= (f > 100) / (1 + (f / 800) ** 2)  # speech-like tilt
    voiced = np.fft.irfft(spectrum, n)
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2 * (np.sin(2 * np.pi * 0.3 * t) > -0.6)
    x = voiced * envelope
    return (level * x / np.abs(x).max()).astype(np.float32)


def chunks_of(x: np.ndarray, size: int) -> list[np.ndarray]:
    return [x[i : i + size] for i in range(0, len(x), size)]


@pytest.mark.parametrize("rate", [24000, 48000, 22050])
def test_meter_agrees_with_pyloudnorm(rate):
    sine = (0.5 * np.sin(2 * np.pi * 997 * np.arange(3 * rate) / rate)).astype(np.float32)
    speech = speech_like(rate, 4.0, 0.8)
    for x in (sine, speech):
        assert loudness.integrated_loudness(x, rate) == pytest.approx(reference_lufs(x, rate), abs=0.15)
    # BS.1770's calibration: a full-scale 997 Hz sine reads -3.01 LUFS (at 48 kHz, where the filter is exact).
    if rate == 48000:
        assert loudness.integrated_loudness(sine / 0.5, rate) == pytest.approx(-3.01, abs=0.05)


def test_meter_fed_chunk_by_chunk_equals_whole_and_gates_silence():
    rate = 24000
    x = speech_like(rate, 3.0, 0.5)
    meter = loudness.LoudnessMeter(rate)
    for chunk in chunks_of(x, 1000):  # chunks that do not line up with the 100 ms steps
        meter.add(chunk)
    assert meter.integrated() == pytest.approx(loudness.integrated_loudness(x, rate), abs=1e-6)
    padded = np.concatenate([np.zeros(rate), x, np.zeros(2 * rate)]).astype(np.float32)
    assert loudness.integrated_loudness(padded, rate) == pytest.approx(meter.integrated(), abs=0.3)  # gated out
    assert loudness.integrated_loudness(np.zeros(rate), rate) == -np.inf


@pytest.mark.parametrize("level", [0.1, 0.3, 1.0])
@pytest.mark.parametrize("chunk_ms", [None, 80, 20])
def test_normalizer_reaches_the_target_under_the_true_peak_ceiling(level, chunk_ms):
    rate = 24000
    x = speech_like(rate, 4.0, level, seed=int(level * 100))
    normalizer = loudness.LoudnessNormalizer(rate, TARGET)
    pieces = [x] if chunk_ms is None else chunks_of(x, rate * chunk_ms // 1000)
    out = [normalizer.process(p) for p in pieces]
    assert [len(o) for o in out] == [len(p) for p in pieces]  # no delay: chunk for chunk
    y = np.concatenate(out)
    assert reference_lufs(y, rate) == pytest.approx(TARGET, abs=1.0)
    assert true_peak_dbtp(y, rate) <= -1.0
    assert np.isfinite(y).all()


def test_the_limiter_catches_peaks_between_samples():
    """A sine at a quarter of the rate, sampled 45 degrees off its crests: samples at 0.707, true peak 1.0."""
    rate = 48000
    n = np.arange(rate)
    x = np.sin(2 * np.pi * n / 4 + np.pi / 4).astype(np.float32) * 0.98
    assert np.abs(x).max() < 0.7  # a sample-peak limiter at -1 dBFS (0.89) would let it through
    assert true_peak_dbtp(x, rate) > -0.5
    limiter = loudness.TruePeakLimiter(rate)
    limited = np.concatenate([limiter.process(c) for c in chunks_of(x, 960)])
    assert true_peak_dbtp(limited[100:-100], rate) <= -1.0


def test_gain_changes_ramp_and_silence_stays_silent():
    rate = 24000
    quiet = speech_like(rate, 2.0, 0.05, seed=1)
    loud = speech_like(rate, 2.0, 0.9, seed=2)
    normalizer = loudness.LoudnessNormalizer(rate, TARGET)
    silence = normalizer.process(np.zeros(rate // 2, dtype=np.float32))
    assert not silence.any() and normalizer.gain_db is None
    y = np.concatenate([normalizer.process(c) for c in chunks_of(np.concatenate([quiet, loud]), 1920)])
    gain = np.abs(y[1:]) / np.maximum(np.abs(np.concatenate([quiet, loud])[1:]), 1e-9)
    steps = np.abs(np.diff(20 * np.log10(np.maximum(gain, 1e-9))[np.abs(np.concatenate([quiet, loud])[1:]) > 0.01]))
    assert np.median(steps) < 0.05  # the gain moves smoothly, not in jumps at chunk edges
    assert reference_lufs(y, rate) == pytest.approx(TARGET, abs=1.5)


def test_control_learns_a_voice_prior_and_parses_the_option():
    rate = 24000
    control = loudness.LoudnessControl(TARGET)
    first = control.normalizer(rate, "joe")
    assert first.prior_gain_db is None
    for chunk in chunks_of(speech_like(rate, 3.0, 0.05), 1920):
        first.process(chunk)
    control.learn("joe", first)
    wanted = TARGET - loudness.integrated_loudness(speech_like(rate, 3.0, 0.05), rate)
    assert control.normalizer(rate, "joe").prior_gain_db == pytest.approx(wanted, abs=0.5)
    assert control.normalizer(rate, "other").prior_gain_db is None
    assert loudness.parse_target("off") is None and loudness.parse_target("-23") == -23.0
    with pytest.raises(ValueError):
        loudness.parse_target("3")


def test_reframer_resamples_seamlessly_into_fixed_frames():
    x = speech_like(22050, 1.0, 0.5)
    reframer = Reframer(22050, 48000, samples_for_ms(20, 48000), pad_last=True)
    frames = [f for c in chunks_of(x, 3000) for f in reframer.push(c)] + reframer.flush()
    assert {len(f) for f in frames} == {960}
    whole = soxr.resample(x, 22050, 48000, quality="HQ")
    streamed = np.concatenate(frames)[: len(whole)]
    assert np.abs(streamed - whole).max() < 1e-3  # the streaming resampler leaves no seams at chunk edges
    assert len(np.concatenate(frames)) - len(whole) < 960
    passthrough = Reframer(24000, 24000)
    assert passthrough.identity and passthrough.push(x)[0] is not None and passthrough.flush() == []
    with pytest.raises(ValueError):
        samples_for_ms(10, 22050)
