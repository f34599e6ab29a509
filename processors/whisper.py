"""faster-whisper STT with the model loaded once per process (pipecat's ``WhisperSTTService``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from faster_whisper import WhisperModel
from pipecat.services.whisper.stt import WhisperSTTService

from vivavoce.model_store import models
from vivavoce.packaged_models import ModelNotFoundError, whisper_tiny_en

# Segmented STT finalises every transcript, so turn detection never waits on this; it only
# silences pipecat's warning. Measured: tiny.en int8 transcribes a 3 s utterance in ~0.3 s on 2 cores.
TINY_EN_P99_SECS = 0.6


def model_dir(model: str) -> Path:
    """``tiny.en`` (bundled) or a local CTranslate2 directory; vivavoce never downloads weights."""
    if model == "tiny.en":
        return whisper_tiny_en()
    path = Path(model).expanduser()
    if not (path / "model.bin").is_file():
        raise ModelNotFoundError(
            f"whisper model '{model}' is neither the bundled 'tiny.en' nor a local CTranslate2 directory "
            "(with model.bin): convert or download it once, then give its path"
        )
    return path


def load_whisper(model: str, device: str, compute_type: str) -> WhisperModel:
    """The faster-whisper model, loaded once per process and warmed up."""
    path = model_dir(model)

    def load() -> WhisperModel:
        whisper = WhisperModel(str(path), device=device, compute_type=compute_type)
        # The first transcription pays for lazy initialisation: pay it at start-up, not in a turn.
        list(whisper.transcribe(np.zeros(16000, dtype=np.float32), language="en")[0])
        return whisper

    return models.get(("whisper", str(path), device, compute_type), load, label=f"faster-whisper {model}")


class SharedWhisperSTTService(WhisperSTTService):
    """pipecat's ``WhisperSTTService``, taking its model from the process-wide store."""

    def _load(self) -> None:
        self._model = load_whisper(str(self._settings.model), self._device, self._compute_type)


def create(config: Any, context: Any) -> SharedWhisperSTTService:
    """Factory for the ``whisper`` kind."""
    return SharedWhisperSTTService(
        device=config.device,
        compute_type=config.compute_type,
        ttfs_p99_latency=TINY_EN_P99_SECS,
        settings=SharedWhisperSTTService.Settings(
            model=config.model, language=config.language, no_speech_prob=config.no_speech_prob
        ),
    )


def preload(config: Any) -> None:
    """Load the model before the first session."""
    load_whisper(config.model, config.device, config.compute_type)
