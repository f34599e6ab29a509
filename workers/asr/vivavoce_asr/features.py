"""Whisper-style log-mel features for Smart Turn v3 (numpy only).

Copied from pipecat-ai 1.14's ``pipecat/audio/turn/smart_turn/_whisper_features.py`` (BSD 2-Clause, Daily;
portions derived from Hugging Face Transformers' Whisper feature extractor, Apache-2.0) so that the worker
computes exactly the features the agent's Smart Turn sees without importing pipecat.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
SAMPLING_RATE = 16000
WINDOW_SECS = 8  # Smart Turn v3 hears the last 8 s of the turn
_MEL_FLOOR = 1e-10
_NORM_VARIANCE_EPS = 1e-7


def _hertz_to_mel_slaney(freq: np.ndarray) -> np.ndarray:
    min_log_hertz, min_log_mel, logstep = 1000.0, 15.0, 27.0 / np.log(6.4)
    freq = np.atleast_1d(np.asarray(freq, dtype=np.float64))
    mels = 3.0 * freq / 200.0
    log_region = freq >= min_log_hertz
    mels[log_region] = min_log_mel + np.log(freq[log_region] / min_log_hertz) * logstep
    return mels


def _mel_to_hertz_slaney(mels: np.ndarray) -> np.ndarray:
    min_log_hertz, min_log_mel, logstep = 1000.0, 15.0, np.log(6.4) / 27.0
    mels = np.atleast_1d(np.asarray(mels, dtype=np.float64))
    freq = 200.0 * mels / 3.0
    log_region = mels >= min_log_mel
    freq[log_region] = min_log_hertz * np.exp(logstep * (mels[log_region] - min_log_mel))
    return freq


def _mel_filterbank() -> np.ndarray:
    """Slaney-normalised triangular filters, shape ``(N_FFT // 2 + 1, N_MELS)``."""
    mel_min = float(_hertz_to_mel_slaney(np.array([0.0]))[0])
    mel_max = float(_hertz_to_mel_slaney(np.array([SAMPLING_RATE / 2.0]))[0])
    filter_freqs = _mel_to_hertz_slaney(np.linspace(mel_min, mel_max, N_MELS + 2))
    fft_freqs = np.linspace(0, SAMPLING_RATE // 2, N_FFT // 2 + 1)
    filter_diff = np.diff(filter_freqs)
    slopes = np.expand_dims(filter_freqs, 0) - np.expand_dims(fft_freqs, 1)
    down_slopes = -slopes[:, :-2] / filter_diff[:-1]
    up_slopes = slopes[:, 2:] / filter_diff[1:]
    filters = np.maximum(np.zeros(1), np.minimum(down_slopes, up_slopes))
    enorm = 2.0 / (filter_freqs[2 : N_MELS + 2] - filter_freqs[:N_MELS])
    return filters * np.expand_dims(enorm, 0)


_HANN = np.hanning(N_FFT + 1)[:-1]  # periodic, as torch.hann_window
_MEL_FILTERS = _mel_filterbank()


def last_seconds(audio: np.ndarray, seconds: int = WINDOW_SECS) -> np.ndarray:
    """The last ``seconds`` of 16 kHz ``audio``, zero-padded at the start when shorter (as pipecat does)."""
    n = seconds * SAMPLING_RATE
    if len(audio) >= n:
        return audio[-n:]
    return np.pad(audio, (n - len(audio), 0))


def smart_turn_features(audio: np.ndarray) -> np.ndarray:
    """Features of one turn for Smart Turn v3: ``(80, 800)`` float32 from its last 8 s of 16 kHz audio."""
    x = np.asarray(last_seconds(audio), dtype=np.float32)
    # Zero-mean unit-variance normalisation before the spectrogram, as transformers' extractor does.
    x = (x - x.mean()) / np.sqrt(x.var() + _NORM_VARIANCE_EPS)
    padded = np.pad(x.astype(np.float64), (N_FFT // 2, N_FFT // 2), mode="reflect")
    windows = sliding_window_view(padded, N_FFT)[::HOP_LENGTH]
    power = (np.abs(np.fft.rfft(windows * _HANN, axis=-1)) ** 2).T
    log_spec = np.log10(np.maximum(_MEL_FLOOR, _MEL_FILTERS.T @ power))[:, :-1]
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)
