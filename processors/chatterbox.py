"""``ChatterboxTTSService``: Resemble AI Chatterbox through the vivavoce Chatterbox worker.

Voices are registered on the worker (``POST /voices`` with a reference clip); the service names one
and sets Chatterbox's expression controls per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vivavoce.processors.worker_client import WorkerTTSService, connection_settings

if TYPE_CHECKING:
    from vivavoce.build_context import BuildContext
    from vivavoce.processors.catalog import ChatterboxConfig


class ChatterboxTTSService(WorkerTTSService):
    """Chatterbox over the worker protocol: a registered voice, exaggeration and CFG weight."""

    def __init__(self, *, voice: str | None = None, exaggeration: float = 0.5, cfg_weight: float = 0.5, **kwargs: Any):
        """``voice``: a voice id registered on the worker (None: the model's built-in voice)."""
        settings = kwargs.pop("settings", None) or self.Settings(model="chatterbox", voice=voice, language=None)
        super().__init__(settings=settings, **kwargs)
        self._exaggeration = exaggeration
        self._cfg_weight = cfg_weight

    def request_fields(self, text: str, request_id: str) -> dict[str, Any]:
        """Voice and expression settings."""
        fields: dict[str, Any] = {"exaggeration": self._exaggeration, "cfg_weight": self._cfg_weight}
        if self._settings.voice:
            fields["voice"] = self._settings.voice
        return fields


def create(config: ChatterboxConfig, context: BuildContext) -> ChatterboxTTSService:
    """Factory for the ``chatterbox`` kind."""
    return ChatterboxTTSService(
        **connection_settings(config),
        voice=config.voice,
        exaggeration=config.exaggeration,
        cfg_weight=config.cfg_weight,
    )
