"""Output rate and framing of a streamed utterance: resampled once, then cut into chunks of a fixed size.

Engines produce audio at their own rate in their own chunks (CSM: 80 ms frames; Piper: a sentence;
Chatterbox: ~1 s). A client may ask for another rate (e.g. 48 kHz for WebRTC) and fixed frames
(e.g. 20 ms); ``Reframer`` does both with a streaming resampler, so chunk boundaries leave no seams.
"""

from __future__ import annotations

import numpy as np
import soxr


class Reframer:
    """Resample a stream from ``in_rate`` to ``out_rate`` and re-cut it into chunks of ``chunk_samples``.

    ``chunk_samples=None`` keeps the incoming chunking (each push gives at most one chunk). With
    ``pad_last`` the final chunk is zero-padded to full size (fixed frames: telephony, WebRTC).
    """

    def __init__(self, in_rate: int, out_rate: int, chunk_samples: int | None = None, *, pad_last: bool = False):
        """Set up for one utterance."""
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.chunk_samples = chunk_samples
        self.pad_last = pad_last
        self._resampler = (
            soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ") if in_rate != out_rate else None
        )
        self._pending = np.zeros(0, dtype=np.float32)

    @property
    def identity(self) -> bool:
        """Whether chunks pass through untouched."""
        return self._resampler is None and self.chunk_samples is None

    def _resample(self, samples: np.ndarray, last: bool) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._resampler is None:
            return samples
        return self._resampler.resample_chunk(samples, last=last).reshape(-1).astype(np.float32, copy=False)

    def _cut(self, audio: np.ndarray, last: bool) -> list[np.ndarray]:
        if self.chunk_samples is None:
            return [audio] if len(audio) else []
        self._pending = np.concatenate([self._pending, audio])
        size = self.chunk_samples
        whole = len(self._pending) // size * size
        chunks = [self._pending[i : i + size] for i in range(0, whole, size)]
        self._pending = self._pending[whole:]
        if last and len(self._pending):
            rest = self._pending
            if self.pad_last:
                rest = np.concatenate([rest, np.zeros(size - len(rest), dtype=np.float32)])
            chunks.append(rest)
            self._pending = np.zeros(0, dtype=np.float32)
        return chunks

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        """The chunks complete after ``samples``."""
        return self._cut(self._resample(samples, last=False), last=False)

    def flush(self) -> list[np.ndarray]:
        """The rest, at the end of the utterance (the resampler's tail, the last partial chunk)."""
        tail = self._resample(np.zeros(0, dtype=np.float32), last=True) if self._resampler is not None else None
        return self._cut(tail if tail is not None else np.zeros(0, dtype=np.float32), last=True)


def samples_for_ms(ms: float, rate: int) -> int:
    """Whole samples in ``ms`` milliseconds at ``rate`` (ValueError when it is not whole)."""
    samples = ms * rate / 1000
    if samples != int(samples) or samples < 1:
        raise ValueError(f"{ms} ms at {rate} Hz is not a whole number of samples")
    return int(samples)
