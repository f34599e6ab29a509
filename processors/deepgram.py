"""Deepgram streaming STT (hosted; key from the environment) via pipecat's ``DeepgramSTTService``."""

from __future__ import annotations

from typing import Any

from pipecat.services.deepgram.stt import DeepgramSTTService


def create(config: Any, context: Any) -> DeepgramSTTService:
    """Factory for the ``deepgram`` kind."""
    return DeepgramSTTService(
        api_key=config.api_key.get_secret_value(),
        settings=DeepgramSTTService.Settings(model=config.model, language=config.language),
    )
