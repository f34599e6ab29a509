"""Piper TTS with the voice loaded once per process (pipecat's ``PiperTTSService``).

Piper (the ``piper-tts`` package) is GPL-3.0: see the README.
"""

from __future__ import annotations

from typing import Any

from piper import PiperVoice
from pipecat.services.piper.tts import PiperTTSService
from pipecat.services.tts_service import TTSService

from vivavoce.model_store import models
from vivavoce.packaged_models import piper_voice


def load_voice(voice: str) -> PiperVoice:
    """The Piper voice, loaded once per process and warmed up."""
    path = piper_voice(voice)

    def load() -> PiperVoice:
        loaded = PiperVoice.load(path)
        for _ in loaded.synthesize("Ready."):  # first inference initialises onnxruntime's kernels
            pass
        return loaded

    return models.get(("piper", str(path)), load, label=f"Piper {path.stem}")


class SharedPiperTTSService(PiperTTSService):
    """pipecat's ``PiperTTSService`` over a shared, already loaded voice.

    The parent's ``__init__`` loads (or downloads) the voice for every instance; this one takes the
    process-wide voice instead and reuses the parent's ``run_tts`` unchanged.
    """

    def __init__(self, *, voice: PiperVoice, voice_name: str, **kwargs: Any):
        """Create the service over a loaded ``PiperVoice``."""
        settings = self.Settings(model=None, voice=voice_name, language=None)
        TTSService.__init__(self, push_start_frame=True, push_stop_frames=True, settings=settings, **kwargs)
        self._voice = voice


def create(config: Any, context: Any) -> SharedPiperTTSService:
    """Factory for the ``piper`` kind."""
    return SharedPiperTTSService(voice=load_voice(config.voice), voice_name=config.voice)


def preload(config: Any) -> None:
    """Load the voice before the first session."""
    load_voice(config.voice)
