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
_MULAW_CLIP = 32635


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
    """G.711 mu-law encoding of PCM16 (the same bytes as ``audioop.lin2ulaw``)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    sign = (x < 0).astype(np.int32) << 7
    magnitude = np.minimum(np.abs(x), _MULAW_CLIP) + _MULAW_BIAS
    exponent = np.clip(np.floor(np.log2(magnitude)).astype(np.int32) - 7, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


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
