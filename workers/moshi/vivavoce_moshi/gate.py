"""Turn gating: hold Moshi silent while the user speaks and until they have paused long enough.

Moshi is full duplex and cuts into the user's pauses (Full-Duplex-Bench takeover rate 0.985). A slot
whose gate is closed steps with its text forced to padding and its audio to silence (see
``engine.BatchedMoshi``), so the model itself waits, and what the user hears is silence.

Speech is detected from the user's own audio, per 80 ms frame, by level: a frame louder than
``threshold_db`` (dBFS) is speech. That works for Kyutai's clients as they are; it is no VAD, so a
noisy room needs a higher threshold (or ``gate=off``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME_MS = 80


@dataclass
class GateSettings:
    """Per-conversation gating options (query parameters ``gate``, ``gate_silence_ms``, ``gate_threshold_db``)."""

    enabled: bool = True
    silence_ms: int = 480
    threshold_db: float = -40.0


class TurnGate:
    """Closed while the user speaks and for ``silence_ms`` after; open otherwise."""

    def __init__(self, settings: GateSettings):
        """Gate one conversation with ``settings``."""
        self.settings = settings
        self._quiet_ms = float("inf")  # the conversation starts with the model free to speak

    def update(self, frame: np.ndarray) -> bool:
        """Feed the user's next 80 ms frame (float32); returns True while the model must stay silent."""
        if not self.settings.enabled:
            return False
        rms = float(np.sqrt(np.mean(np.square(frame, dtype=np.float64)))) if len(frame) else 0.0
        level_db = 20 * np.log10(max(rms, 1e-9))
        self._quiet_ms = 0.0 if level_db > self.settings.threshold_db else self._quiet_ms + FRAME_MS
        return self._quiet_ms < self.settings.silence_ms
