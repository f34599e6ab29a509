"""Process settings for real-time inference on few CPU cores; apply before torch/ctranslate2 load.

OpenMP thread pools (torch, CTranslate2) spin for a while after each parallel region by default.
With several models sharing two cores (VAD, Smart Turn, Whisper, the LLM, Piper), a pool spinning
after the LLM's last token steals the core Whisper needs: measured, a 330 ms transcription took up
to 2.2 s inside a conversation. Passive waiting gives the cores back at once.
"""

from __future__ import annotations

import os

REALTIME_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def apply_realtime_env() -> None:
    """Set the variables unless the user already chose values."""
    for name, value in REALTIME_ENV.items():
        os.environ.setdefault(name, value)
