"""``PiperWorkerTTSService``: Piper on a vivavoce Piper worker (workers/piper, ``WS /v1/stream``)."""

from __future__ import annotations

from typing import Any

from vivavoce.processors.first_phrase import FirstPhraseTTSMixin
from vivavoce.processors.worker_client import WorkerTTSService


class PiperWorkerTTSService(FirstPhraseTTSMixin, WorkerTTSService):
    """Piper on a Piper worker (``WS /v1/stream``), with the same first-phrase aggregation as in-process."""

    def __init__(self, *, voice: str, first_phrase_words: int = 3, **kwargs: Any):
        """``voice``: a voice the worker serves (its name, or the path of its .onnx file on the worker)."""
        settings = kwargs.pop("settings", None) or self.Settings(model="piper", voice=voice, language=None)
        super().__init__(settings=settings, **kwargs)
        if first_phrase_words > 0:
            self._speak_first_phrases(first_phrase_words)

    def request_fields(self, text: str, request_id: str) -> dict[str, Any]:
        """The voice."""
        return {"voice": self._settings.voice}
