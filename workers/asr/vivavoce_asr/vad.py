"""Streaming Silero VAD (v6, the ONNX file faster-whisper ships): speech probability per 32 ms window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

WINDOW = 512  # samples at 16 kHz (32 ms): the model's step
CONTEXT = 64  # samples of the previous window each step also sees
WINDOW_SECS = WINDOW / 16000


class SileroVad:
    """The model, loaded once per process and shared by every stream (each keeps its own state)."""

    def __init__(self, path: Path):
        """Load ``path`` on the CPU with one thread: a step is ~0.1 ms, more threads only add overhead."""
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        options.log_severity_level = 4
        self._session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"], sess_options=options)

    def stream(self) -> VadStream:
        """A new stream's state."""
        return VadStream(self)

    def run(self, windows: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Probabilities of ``windows`` (n, CONTEXT + WINDOW) in order, carrying the LSTM state."""
        probs, h, c = self._session.run(None, {"input": windows, "h": h, "c": c})
        return np.asarray(probs, dtype=np.float32).reshape(-1), h, c


class VadStream:
    """One stream's VAD: feed 16 kHz float32 samples of any length, get one probability per whole window.

    The model's first axis is a sequence (its LSTM runs along it), so all whole windows of a frame go
    through in one call, as faster-whisper's own ``SileroVADModel`` does for a whole file.
    """

    def __init__(self, vad: SileroVad):
        """Fresh state: zero LSTM state and zero context, as at the start of a file."""
        self._vad = vad
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Speech probabilities of the windows completed by ``samples`` (maybe none)."""
        audio = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        count = len(audio) // WINDOW
        self._pending = audio[count * WINDOW :].copy()
        if not count:
            return np.zeros(0, dtype=np.float32)
        windows = audio[: count * WINDOW].reshape(count, WINDOW)
        contexts = np.concatenate([self._context[None], windows[:-1, -CONTEXT:]])
        self._context = windows[-1, -CONTEXT:].copy()
        probs, self._h, self._c = self._vad.run(
            np.ascontiguousarray(np.concatenate([contexts, windows], axis=1), dtype=np.float32), self._h, self._c
        )
        return probs
