"""Deepgram streaming STT (hosted; key from the environment) via pipecat's ``DeepgramSTTService``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipecat.services.deepgram.stt import DeepgramSTTService

if TYPE_CHECKING:
    from vivavoce.build_context import BuildContext
    from vivavoce.processors.catalog import DeepgramConfig


def create(config: DeepgramConfig, context: BuildContext) -> DeepgramSTTService:
    """Factory for the ``deepgram`` kind."""
    return DeepgramSTTService(
        api_key=config.api_key.get_secret_value(),
        settings=DeepgramSTTService.Settings(model=config.model, language=config.language),
    )
