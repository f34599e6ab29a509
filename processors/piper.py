"""Piper TTS: in-process with the voice loaded once per process (pipecat's ``PiperTTSService``), or on a
Piper worker (workers/piper) when the bot file gives a ``url``.

Piper (the ``piper-tts`` package) is GPL-3.0: see the README.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipecat.services.piper.tts import PiperTTSService
from pipecat.services.tts_service import TTSService
from piper import PiperVoice

from vivavoce.model_store import models
from vivavoce.packaged_models import piper_voice
from vivavoce.processors.first_phrase import FirstPhraseTTSMixin
from vivavoce.processors.piper_edges import EdgeTrimmedVoice

if TYPE_CHECKING:
    from vivavoce.build_context import BuildContext
    from vivavoce.processors.catalog import PiperConfig


def load_voice(voice: str) -> PiperVoice:
    """The Piper voice, loaded once per process and warmed up."""
    path = piper_voice(voice)

    def load() -> PiperVoice:
        loaded = PiperVoice.load(path)
        for _ in loaded.synthesize("Ready."):  # first inference initialises onnxruntime's kernels
            pass
        return loaded

    return models.get(("piper", str(path)), load, label=f"Piper {path.stem}")


class SharedPiperTTSService(FirstPhraseTTSMixin, PiperTTSService):
    """pipecat's ``PiperTTSService`` over a shared, already loaded voice.

    The parent's ``__init__`` loads (or downloads) the voice for every instance; this one takes the
    process-wide voice instead and reuses the parent's ``run_tts`` unchanged, over the voice's sentences cut
    to their sound (``piper_edges``: Piper's silences at the joins of a reply's pieces were heard as stalls).
    """

    def __init__(
        self,
        *,
        voice: PiperVoice,
        voice_name: str,
        first_phrase_words: int = 3,
        trim_silence: bool = True,
        **kwargs: Any,
    ):
        """Create the service over a loaded ``PiperVoice``.

        ``first_phrase_words``: speak each reply's opening phrase (at most this many words) without
        waiting for its first sentence to end; 0 keeps pipecat's sentence-by-sentence aggregation.
        ``trim_silence``: cut each sentence to its sound (``piper_edges``); false: Piper's audio as it comes.
        """
        settings = self.Settings(model=None, voice=voice_name, language=None)
        TTSService.__init__(self, push_start_frame=True, push_stop_frames=True, settings=settings, **kwargs)
        self._voice = EdgeTrimmedVoice(voice) if trim_silence else voice
        if first_phrase_words > 0:
            self._speak_first_phrases(first_phrase_words)


def create(config: PiperConfig, context: BuildContext) -> TTSService:
    """Factory for the ``piper`` kind: in-process, or on the worker at ``url``, or on the fleet's."""
    if config.url or config.registry:
        from vivavoce.processors.piper_worker import PiperWorkerTTSService
        from vivavoce.worker_directory import Selector

        return PiperWorkerTTSService(
            url=config.url,
            registry=config.registry,
            selector=Selector(family="piper", voice=config.voice),
            api_key=config.api_key.get_secret_value() if config.api_key else None,
            voice=config.voice,
            first_phrase_words=config.first_phrase_words,
            has_fallback=config.fallback is not None,
        )
    return SharedPiperTTSService(
        voice=load_voice(config.voice),
        voice_name=config.voice,
        first_phrase_words=config.first_phrase_words,
        trim_silence=config.trim_silence,
    )


def preload(config: PiperConfig) -> None:
    """Load the voice before the first session (nothing to load here when a worker speaks)."""
    if not (config.url or config.registry):
        load_voice(config.voice)
