"""Process settings for real-time inference on few CPU cores; apply before torch/ctranslate2 load.

OpenMP thread pools (torch, CTranslate2) spin for a while after each parallel region by default.
With several models sharing two cores (VAD, Smart Turn, Whisper, the LLM, Piper), a pool spinning
after the LLM's last token steals the core Whisper needs, and a transcription took several times as long
inside a conversation as on its own (bench/local_latency.py's STT stage; figures in bench/README.md).
Passive waiting gives the cores back at once.
"""

from __future__ import annotations

import os

REALTIME_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def apply_realtime_env() -> None:
    """Set the variables unless the user already chose values."""
    for name, value in REALTIME_ENV.items():
        os.environ.setdefault(name, value)
