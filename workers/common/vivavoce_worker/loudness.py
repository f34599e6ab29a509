"""Loudness normalisation of streamed speech: a target integrated loudness and a true-peak ceiling.

Loudness is measured as ITU-R BS.1770-4 / EBU R128 define it (K-weighting, 400 ms blocks every 100 ms,
absolute gate -70 LUFS, relative gate -10 LU). A worker cannot wait for the whole utterance, so each
chunk's gain is decided when the chunk arrives, from the loudness measured so far *including that
chunk* (the one chunk of look-ahead allowed; it adds no latency, the chunk is already made). Until
400 ms are measured the estimate is blended with the voice's prior gain (learned from its previous
utterances). The gain is the one that puts the utterance so far on the target after the limiter
(``LoudnessNormalizer``); it moves at a bounded rate and ramps inside each chunk, so it never steps.
A limiter inside the chunk then keeps the 4x-oversampled (true) peak under the ceiling. Gains and
limiter state carry over from chunk to chunk; the output has the input's length, chunk for chunk.

Speech from TTS models often peaks at full scale while it sits near -20 LUFS, so -16 LUFS under a
-1 dBTP ceiling takes 4-6 dB off its peaks: the limiter's attack and hold are short (1 ms, 2 ms) so
that only the peaks pay, not the syllables around them (figures: bench/README.md).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Hashable
from functools import lru_cache

import numpy as np

DEFAULT_TARGET_LUFS = -16.0
DEFAULT_TRUE_PEAK_DBTP = -1.0
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
BLOCK_S = 0.4
STEP_S = 0.1  # blocks overlap by 75 %
MAX_GAIN_DB = 30.0  # never lift a near-silent engine's noise floor further than this
MIN_GAIN_DB = -30.0
RAMP_S = 0.05  # a gain change is spread over at most this much of a chunk
PRIOR_WEIGHT_S = BLOCK_S  # until this much audio is measured, the voice's prior gain weighs in
PRIOR_LEARNING = 0.5  # how far each finished utterance moves its voice's prior
# The limiter aims this far below the ceiling: its 4x interpolator and the resampling that may follow
# misjudge inter-sample peaks by a little.
LIMITER_MARGIN_DB = 0.4
LIMITER_ATTACK_S = 0.001  # gain ramps down over this (and back up over the same)
LIMITER_HOLD_S = 0.002  # and holds a reduction this long after the peak: short, so that only the peaks pay
MAX_MAKEUP_DB = 12.0  # never lift a chunk further above the measured gain than this (limiter loss, catch-up)
MAX_CATCH_UP_DB = 6.0  # nor lower it further below
CATCH_UP_S = 0.5  # a shortfall of the chunks before is made good over this much audio
SLEW_DB_PER_S = 60.0  # the gain moves at most this fast from chunk to chunk
QUIET_CHUNK_LU = -15.0  # a chunk this far below the loudness so far is a pause: it keeps the gain
OVERSAMPLE = 4
_INTERP_HALF_TAPS = 16  # 32 taps a phase: flat to 0.4 of the rate, so peaks are not under-read


@lru_cache(maxsize=16)
def _k_weighting_fir(rate: int) -> np.ndarray:
    """The K-weighting filter (BS.1770's pre-filter shelf + RLB high-pass) as an FIR of 0.1 s.

    The two biquads are designed for ``rate`` as libebur128 does (exactly BS.1770's coefficients at
    48 kHz); their impulse response, truncated after 0.1 s (by then the 38 Hz high-pass has decayed
    below 1e-6), runs as a vectorised FFT convolution instead of a per-sample loop.
    """
    k = math.tan(math.pi * 1681.974450955533 / rate)
    vh = 10 ** (3.999843853973347 / 20)
    vb = vh**0.4996667741545416
    q = 0.7071752369554196
    a0 = 1 + k / q + k * k
    shelf_b = [(vh + vb * k / q + k * k) / a0, 2 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0]
    shelf_a = [1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]
    k = math.tan(math.pi * 38.13547087602444 / rate)
    q = 0.5003270373238773
    a0 = 1 + k / q + k * k
    hp_b = [1.0, -2.0, 1.0]
    hp_a = [1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]
    taps = max(64, int(0.1 * rate))
    impulse = np.zeros(taps)
    impulse[0] = 1.0
    return _biquad(_biquad(impulse, shelf_b, shelf_a), hp_b, hp_a)


def _biquad(x: np.ndarray, b: list[float], a: list[float]) -> np.ndarray:
    """Direct-form I biquad (only used once per rate, on an impulse)."""
    y = np.zeros_like(x)
    x1 = x2 = y1 = y2 = 0.0
    for i, xi in enumerate(x):
        yi = b[0] * xi + b[1] * x1 + b[2] * x2 - a[1] * y1 - a[2] * y2
        x2, x1, y2, y1 = x1, xi, y1, yi
        y[i] = yi
    return y


def _convolve_valid(signal: np.ndarray, fir: np.ndarray) -> np.ndarray:
    """``np.convolve(signal, fir, 'valid')`` through the FFT."""
    n = len(signal) + len(fir) - 1
    size = 1 << (n - 1).bit_length()
    full = np.fft.irfft(np.fft.rfft(signal, size) * np.fft.rfft(fir, size), size)[:n]
    return full[len(fir) - 1 : len(signal)]


def _lufs(mean_square: float) -> float:
    return -0.691 + 10 * math.log10(mean_square) if mean_square > 0 else -math.inf


class LoudnessMeter:
    """BS.1770 integrated loudness of a stream, fed chunk by chunk."""

    def __init__(self, rate: int):
        """Measure a mono stream at ``rate`` Hz."""
        self.rate = rate
        self._fir = _k_weighting_fir(rate)
        self._history = np.zeros(len(self._fir) - 1)
        self._step = round(STEP_S * rate)
        self._steps_per_block = round(BLOCK_S / STEP_S)
        self._partial_sum = 0.0  # of the step being filled
        self._partial_n = 0
        self._steps: list[float] = []  # mean square of each complete 100 ms step
        self.blocks: list[float] = []  # mean square of each complete 400 ms block
        self.total_sum = 0.0
        self.samples = 0
        self.last_weighted = np.zeros(0)  # the K-weighted samples of the latest chunk

    def add(self, samples: np.ndarray) -> None:
        """Measure the next samples."""
        if not len(samples):
            return
        x = np.concatenate([self._history, samples.astype(np.float64)])
        weighted = _convolve_valid(x, self._fir)
        self._history = x[-(len(self._fir) - 1) :]
        self.last_weighted = weighted
        squares = weighted * weighted
        self.total_sum += float(squares.sum())
        self.samples += len(squares)
        start = 0
        while start < len(squares):
            take = min(self._step - self._partial_n, len(squares) - start)
            self._partial_sum += float(squares[start : start + take].sum())
            self._partial_n += take
            start += take
            if self._partial_n == self._step:
                self._steps.append(self._partial_sum / self._step)
                self._partial_sum, self._partial_n = 0.0, 0
                if len(self._steps) >= self._steps_per_block:
                    self.blocks.append(sum(self._steps[-self._steps_per_block :]) / self._steps_per_block)

    @property
    def seconds(self) -> float:
        """Audio measured so far."""
        return self.samples / self.rate

    def integrated(self) -> float:
        """Gated integrated loudness (LUFS) of the complete blocks; -inf when none passes the gates.

        Before the first block is complete: the loudness of everything so far (ungated but for the
        absolute gate), which is the best estimate there is.
        """
        if not self.blocks:
            level = _lufs(self.total_sum / self.samples) if self.samples else -math.inf
            return level if level > ABSOLUTE_GATE_LUFS else -math.inf
        blocks = np.array(self.blocks)
        loud = blocks[blocks > 10 ** ((ABSOLUTE_GATE_LUFS + 0.691) / 10)]
        if not len(loud):
            return -math.inf
        relative = _lufs(float(loud.mean())) + RELATIVE_GATE_LU
        kept = loud[loud > 10 ** ((relative + 0.691) / 10)]
        return _lufs(float(kept.mean()))


@lru_cache(maxsize=4)
def _interpolator(factor: int = OVERSAMPLE) -> np.ndarray:
    """Windowed-sinc FIRs ``[factor - 1, 2 * half]`` for the in-between phases of ``factor``x oversampling."""
    taps = np.arange(-_INTERP_HALF_TAPS + 1, _INTERP_HALF_TAPS + 1)
    window = np.kaiser(2 * _INTERP_HALF_TAPS + 1, 8.0)
    phases = []
    for phase in range(1, factor):
        t = taps - phase / factor  # x[n + 1 - tap] sits at this offset from the point wanted
        h = np.sinc(t) * np.interp(t, np.arange(-_INTERP_HALF_TAPS, _INTERP_HALF_TAPS + 1), window)
        phases.append(h / h.sum())
    return np.array(phases)


def _sliding_min(x: np.ndarray, width: int) -> np.ndarray:
    """``out[i] = min(x[i : i + width])`` for every full window, in O(n) (van Herk / Gil-Werman)."""
    n = len(x)
    padded = np.concatenate([x, np.full((-n) % width, np.inf)]).reshape(-1, width)
    prefix = np.minimum.accumulate(padded, axis=1).ravel()
    suffix = np.minimum.accumulate(padded[:, ::-1], axis=1)[:, ::-1].ravel()
    i = np.arange(n - width + 1)
    return np.minimum(suffix[i], prefix[i + width - 1])


def inter_sample_peaks(x: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Per sample: the largest magnitude of the 4x-oversampled signal between its neighbours and it.

    ``before``/``after``: samples around ``x`` (history, and a guess of what follows), at least
    ``_INTERP_HALF_TAPS`` each.
    """
    half = _INTERP_HALF_TAPS
    ext = np.concatenate([before[-half:], x, after[:half]])
    peaks = np.abs(x).astype(np.float64)
    # between[p][j]: the point p/4 of the way from ext[j + half - 1] to ext[j + half], j = 0..len(x)
    for h in _interpolator():
        between = np.abs(np.convolve(ext, h[::-1], "valid"))[: len(x) + 1]
        peaks = np.maximum(peaks, np.maximum(between[:-1], between[1:]))
    return peaks


class TruePeakLimiter:
    """Keeps the true peak of a stream under ``ceiling_db`` dBTP, chunk by chunk, without delay.

    The gain needed at each sample (from its inter-sample peaks) is spread as a min-hold followed by a
    moving average whose window equals the look-ahead, which never exceeds the needed gain inside a
    chunk; at a chunk's start, where the previous chunk could not see ahead, the gain is clamped
    to what is needed.
    """

    def __init__(self, rate: int, ceiling_db: float = DEFAULT_TRUE_PEAK_DBTP):
        """Limit a mono stream at ``rate`` Hz."""
        self.ceiling = 10 ** ((ceiling_db - LIMITER_MARGIN_DB) / 20)
        self._attack = max(2, round(LIMITER_ATTACK_S * rate))
        self._hold = max(1, round(LIMITER_HOLD_S * rate))
        self._state = (np.ones(self._hold), np.ones(self._attack - 1), np.zeros(_INTERP_HALF_TAPS))
        self.reduced_samples = 0

    def gain(self, x: np.ndarray, *, commit: bool = True) -> np.ndarray:
        """The limiter's gain for each sample of chunk ``x``; ``commit=False`` tries without moving on."""
        needed_history, held_history, input_history = self._state
        future = np.full(_INTERP_HALF_TAPS, x[-1])  # what follows is unknown: assume it holds still
        peaks = inter_sample_peaks(x, input_history, future)
        needed = np.minimum(1.0, self.ceiling / np.maximum(peaks, 1e-12))
        if min(needed.min(), needed_history.min(), held_history.min()) >= 1.0:
            gain = np.ones(len(x))
            held_all = np.ones(len(x) + self._attack - 1)
        else:
            # held[n] = min(needed[n - hold .. n + attack - 1]); unknown future counts as "no reduction"
            extended = np.concatenate([needed_history, needed, np.ones(self._attack - 1)])
            held_all = np.concatenate([held_history, _sliding_min(extended, self._hold + self._attack)])
            smooth = np.cumsum(np.concatenate([[0.0], held_all]))
            gain = np.minimum((smooth[self._attack :] - smooth[: -self._attack]) / self._attack, needed)
        if commit:
            self._state = (
                np.concatenate([needed_history, needed])[-self._hold :],
                held_all[-(self._attack - 1) :],
                np.concatenate([input_history, x])[-_INTERP_HALF_TAPS:],
            )
            self.reduced_samples += int(np.count_nonzero(gain < 1.0))
        return gain

    def process(self, x: np.ndarray) -> np.ndarray:
        """The limited chunk (float32, same length)."""
        if not len(x):
            return np.asarray(x, dtype=np.float32)
        return (x * self.gain(x)).astype(np.float32)


class LoudnessNormalizer:
    """One utterance's streaming normaliser: ``process(chunk)`` for every chunk, in order.

    Each chunk's gain is the one that brings the utterance so far, this chunk included, to the target
    *after* the limiter: the output's K-weighted energy is kept in step with the input's times the
    gain the measured loudness asks for, so a quiet sentence after a loud one is lifted, and what the
    limiter takes off the peaks is made up (found by trying the limiter on the chunk at two gains).
    The gain moves at most ``SLEW_DB_PER_S`` and ramps inside each chunk; near-silent chunks keep it.
    """

    def __init__(
        self,
        rate: int,
        target_lufs: float = DEFAULT_TARGET_LUFS,
        true_peak_db: float = DEFAULT_TRUE_PEAK_DBTP,
        prior_gain_db: float | None = None,
    ):
        """Normalise a stream at ``rate`` Hz.

        ``prior_gain_db``: the gain this voice usually needs, weighed in until 400 ms are heard; None
        when nothing is known yet (the first chunk's own loudness decides).
        """
        self.rate = rate
        self.target_lufs = target_lufs
        self.prior_gain_db = prior_gain_db
        self.meter = LoudnessMeter(rate)
        self.limiter = TruePeakLimiter(rate, true_peak_db)
        self.gain_db: float | None = None  # the gain reached, None until the first sounding chunk
        # K-weighted energies so far: of the input, of the input at the gain, and of the output.
        self._energy_in = self._energy_gained = self._energy_out = 0.0

    def target_gain_db(self) -> float | None:
        """The gain the loudness measured so far asks for (blended with the prior early on), before make-up."""
        measured = self.meter.integrated()
        if not math.isfinite(measured):
            return None
        wanted = self.target_lufs - measured
        if self.prior_gain_db is not None and not self.meter.blocks:
            weight = min(1.0, self.meter.seconds / PRIOR_WEIGHT_S)
            wanted = weight * wanted + (1 - weight) * self.prior_gain_db
        return min(MAX_GAIN_DB, max(MIN_GAIN_DB, wanted))

    def _ramp(self, to_db: float, samples: int) -> np.ndarray:
        """Linear gain per sample: from the gain reached so far to ``to_db`` over the chunk's start."""
        end = 10 ** (to_db / 20)
        start = 10 ** (self.gain_db / 20) if self.gain_db is not None else end
        gain = np.full(samples, end)
        ramp = min(samples, max(1, round(RAMP_S * self.rate)))
        gain[:ramp] = np.linspace(start, end, ramp + 1)[1:]
        return gain

    def _output_db(self, chunk: np.ndarray, weighted: np.ndarray, gain_db: float) -> float:
        """K-weighted energy (dB) this chunk would leave with at ``gain_db``, limiter included (a trial)."""
        gain = self._ramp(gain_db, len(chunk))
        out = weighted * gain * self.limiter.gain(chunk * gain, commit=False)
        return 10 * math.log10(max(float(out @ out), 1e-30))

    def _decide(self, chunk: np.ndarray, weighted: np.ndarray, base: float) -> float:
        """The gain for this chunk (see the class docstring)."""
        energy = float(weighted @ weighted)
        if self.gain_db is not None and _lufs(energy / len(chunk)) < self.meter.integrated() + QUIET_CHUNK_LU:
            return self.gain_db  # a pause: nothing to measure the gain by
        # What the output of this chunk must carry for the utterance so far to sit on the target.
        # The deficit (or surplus) of the chunks before is made good over CATCH_UP_S, not in one chunk.
        deficit = 10 ** (base / 10) * self._energy_in - self._energy_out
        needed = 10 ** (base / 10) * energy + deficit * min(1.0, len(chunk) / self.rate / CATCH_UP_S)
        needed = max(needed, 10 ** ((base - MAX_CATCH_UP_DB) / 10) * energy)
        goal = 10 * math.log10(max(needed, 1e-30))
        # More gain, more limiting: a step as if the limiter were not there, then the secant.
        g0 = base + self.limiter_loss_db
        h0 = self._output_db(chunk, weighted, g0) - goal
        g1 = g0 - h0
        h1 = self._output_db(chunk, weighted, g1) - goal
        wanted = g1 - h1 * (g1 - g0) / (h1 - h0) if abs(h1 - h0) > 1e-6 else g1
        wanted = min(MAX_GAIN_DB, base + MAX_MAKEUP_DB, max(base - MAX_CATCH_UP_DB, wanted))
        if self.gain_db is not None:
            slew = SLEW_DB_PER_S * len(chunk) / self.rate
            wanted = min(self.gain_db + slew, max(self.gain_db - slew, wanted))
        return wanted

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """The chunk at the gain decided now, limited (float32, same length)."""
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if not len(chunk):
            return chunk
        self.meter.add(chunk)
        weighted = self.meter.last_weighted
        base = self.target_gain_db()
        gain_db = self.current_gain_db if base is None else self._decide(chunk, weighted, base)
        gain = self._ramp(gain_db, len(chunk))
        if base is not None:
            self.gain_db = gain_db
        gained = chunk * gain
        limited = self.limiter.gain(gained)
        before = weighted * gain
        after = before * limited
        self._energy_in += float(weighted @ weighted)
        self._energy_gained += float(before @ before)
        self._energy_out += float(after @ after)
        return (gained * limited).astype(np.float32)

    @property
    def current_gain_db(self) -> float:
        """The gain applied now (the prior, or none, until a sounding chunk has come)."""
        if self.gain_db is not None:
            return self.gain_db
        return self.prior_gain_db if self.prior_gain_db is not None else 0.0

    @property
    def limiter_loss_db(self) -> float:
        """Loudness the limiter has taken so far (what the gain makes up for)."""
        return 10 * math.log10(self._energy_gained / self._energy_out) if self._energy_out > 0 else 0.0

    def finished_gain_db(self) -> float | None:
        """The gain the whole utterance asked for, before make-up, once it is over (None: too little to tell)."""
        if not self.meter.blocks:
            return None
        return self.target_gain_db()


class LoudnessControl:
    """A worker's loudness settings, and each voice's prior gain learned from its utterances."""

    def __init__(self, target_lufs: float = DEFAULT_TARGET_LUFS, true_peak_db: float = DEFAULT_TRUE_PEAK_DBTP):
        """Normalise every utterance to ``target_lufs`` with true peaks under ``true_peak_db`` dBTP."""
        self.target_lufs = target_lufs
        self.true_peak_db = true_peak_db
        self._priors: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def normalizer(self, rate: int, voice: Hashable = None) -> LoudnessNormalizer:
        """A normaliser for one utterance of ``voice``."""
        with self._lock:
            prior = self._priors.get(voice)
        return LoudnessNormalizer(rate, self.target_lufs, self.true_peak_db, prior)

    def learn(self, voice: Hashable, normalizer: LoudnessNormalizer) -> None:
        """Move ``voice``'s prior towards the gain its finished utterance asked for."""
        wanted = normalizer.finished_gain_db()
        if wanted is None:
            return
        with self._lock:
            prior = self._priors.get(voice)
            self._priors[voice] = wanted if prior is None else prior + PRIOR_LEARNING * (wanted - prior)

    def describe(self) -> dict[str, float]:
        """For ``/health``."""
        return {"target_lufs": self.target_lufs, "true_peak_dbtp": self.true_peak_db}


def integrated_loudness(samples: np.ndarray, rate: int) -> float:
    """BS.1770 integrated loudness (LUFS) of a whole signal."""
    meter = LoudnessMeter(rate)
    meter.add(np.asarray(samples, dtype=np.float64))
    return meter.integrated()


def true_peak_db(samples: np.ndarray) -> float:
    """Peak of the 4x-oversampled signal, in dBTP (the limiter's own estimate)."""
    x = np.asarray(samples, dtype=np.float64)
    zeros = np.zeros(_INTERP_HALF_TAPS)
    peak = float(inter_sample_peaks(x, zeros, zeros).max()) if len(x) else 0.0
    return 20 * math.log10(peak) if peak > 0 else -math.inf


def parse_target(value: str) -> float | None:
    """``--loudness-lufs``: a target in LUFS (-40..-5), or ``off``."""
    if value.strip().lower() in ("off", "none", "no"):
        return None
    target = float(value)
    if not -40.0 <= target <= -5.0:
        raise ValueError(f"loudness target {target} LUFS is outside -40..-5")
    return target
