"""Helpers for tests/test_webrtc.py that bot files name by dotted path (pytest puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

from typing import Any

from pipecat.processors.frame_processor import FrameProcessor


class Unbuildable(FrameProcessor):
    """A processor whose construction fails, as a missing model or a bad setting would."""

    def __init__(self, **kwargs: Any):
        raise RuntimeError("this processor cannot be built (on purpose)")
