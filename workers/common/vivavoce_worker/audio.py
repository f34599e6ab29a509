"""PCM16 conversions, WAV and G.711 mu-law encoding (numpy + soxr: no torchaudio, no audioop)."""

from __future__ import annotations

import base64
import binascii
import io
import wave

import numpy as np
import soxr

MULAW_RATE = 8000
_MULAW_BIAS = 0x84
_MULAW_CLIP = 8159  # on the 14-bit magnitude
_MULAW_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] to little-endian PCM16 bytes (clipped)."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    """Little-endian PCM16 bytes to float32 samples in [-1, 1)."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def resample(samples: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Whole-buffer resampling of float32 mono samples."""
    if in_rate == out_rate:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples.astype(np.float32, copy=False), in_rate, out_rate).astype(np.float32)


def wav_bytes(pcm: bytes, sample_rate: int) -> bytes:
    """Mono PCM16 in a WAV container."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return buf.getvalue()


def pcm16_to_mulaw(pcm: bytes) -> bytes:
    """G.711 mu-law encoding of PCM16, byte for byte what ``audioop.lin2ulaw`` gives (Sun's g711)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.int32) >> 2  # 14-bit
    negative = x < 0
    magnitude = np.minimum(np.where(negative, -x, x), _MULAW_CLIP) + (_MULAW_BIAS >> 2)
    segment = np.searchsorted(_MULAW_SEGMENT_ENDS, magnitude)
    value = (np.minimum(segment, 7) << 4) | ((magnitude >> (np.minimum(segment, 7) + 1)) & 0x0F)
    value = np.where(segment >= 8, 0x7F, value)
    return (value ^ np.where(negative, 0x7F, 0xFF)).astype(np.uint8).tobytes()


def mulaw_8k(pcm: bytes, sample_rate: int) -> bytes:
    """PCM16 at ``sample_rate`` to raw 8 kHz mu-law, as Twilio Media Streams play it."""
    narrow = resample(pcm16_to_float(pcm), sample_rate, MULAW_RATE)
    return pcm16_to_mulaw(float_to_pcm16(narrow))


def decode_base64_pcm16(data: str) -> np.ndarray:
    """Base64 PCM16 (as context turns carry it) to float32; ValueError when it is not."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"audio is not valid base64: {e}") from None
    if len(raw) % 2:
        raise ValueError("audio has an odd number of bytes: expected PCM16")
    return pcm16_to_float(raw)


# Piper's sentences, cut to their sound: the rule and the figures are the agent's (vivavoce.processors.piper_edges,
# where the reason is measured); the worker cannot import the agent, so the rule is repeated here.
_WINDOW_SECS = 0.005
_SOUND_RMS = 0.003
_LEAD_SECS = 0.01
_PAUSES = {".": 0.25, "?": 0.25, "!": 0.25, "…": 0.25, ",": 0.2, ";": 0.2, ":": 0.2}
_JOIN_SECS = 0.04


def trim_sentence(samples: np.ndarray, rate: int, phonemes: list[str], text: str) -> np.ndarray:
    """A Piper sentence from 10 ms before its first sound to a pause after its last that fits how it ends
    (the punctuation Piper read last, else the text's end): 0.25 s at most after a sentence, 0.2 s after a
    clause break, 40 ms where the text stops mid-sentence and the next request goes on."""
    spoken = [p for p in phonemes if p.strip()]
    last = spoken[-1] if spoken and spoken[-1] in _PAUSES else text.rstrip()[-1:]
    pause = _PAUSES.get(last, _JOIN_SECS)
    step = max(1, int(rate * _WINDOW_SECS))
    count = len(samples) // step
    if count == 0:
        return samples
    windows = samples[: count * step].reshape(count, step).astype(np.float64)
    loud = np.flatnonzero(np.sqrt((windows**2).mean(axis=1)) > _SOUND_RMS)
    if len(loud) == 0:
        return samples
    start = max(0, int(loud[0]) * step - int(rate * _LEAD_SECS))
    return samples[start : min(len(samples), (int(loud[-1]) + 1) * step + int(rate * pause))]
