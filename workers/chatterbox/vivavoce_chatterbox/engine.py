"""Chatterbox (``chatterbox-streaming``'s ``ChatterboxTTS.generate_stream``) as a worker engine.

A thin adapter: the model object holds one set of conditionals at a time, so each request swaps in
its voice's conditionals (requests run one at a time in the generation thread) and streams the
chunks ``generate_stream`` yields. Cancel takes effect at the next chunk (``chunk_size`` speech
tokens, 25 = 1 s of audio by default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loguru import logger

from vivavoce_worker.engine import Emit, Engine, ServiceOptions, SynthesisRequest

# /v1/tts's named emotions as Chatterbox exaggeration (a number 0-2 is taken as it is).
EMOTIONS = {"calm": 0.3, "neutral": 0.5, "expressive": 0.9, "excited": 1.3}


class ChatterboxEngine(Engine):
    """``ChatterboxTTS`` with per-voice conditionals."""

    name = "chatterbox"

    def __init__(self, model: Path | None, device: str, chunk_size: int = 25, max_audio_ms: int = 30_000):
        """``model``: a local checkpoint dir (``ChatterboxTTS.from_local``); None: the published weights."""
        self.model_dir = model
        self.device = device
        self.chunk_size = chunk_size
        self.max_audio_ms = max_audio_ms
        self.voices: dict[str, Any] = {}

    def load(self) -> None:
        """Load the model; its built-in conditionals are the default voice."""
        try:
            from chatterbox.tts import ChatterboxTTS
        except ImportError as e:
            raise SystemExit(f"chatterbox-streaming is not installed here ({e}): run `make worker-chatterbox`") from e
        if self.model_dir is not None and not self.model_dir.is_dir():
            raise SystemExit(f"--model {self.model_dir}: no such directory (a Chatterbox checkpoint)")
        logger.info("loading Chatterbox from {} on {}", self.model_dir or "the published weights", self.device)
        if self.model_dir is not None:
            self.tts = ChatterboxTTS.from_local(self.model_dir, self.device)
        else:
            self.tts = ChatterboxTTS.from_pretrained(self.device)
        self.sample_rate = self.tts.sr
        self._builtin = self.tts.conds

    def make_voice(self, wav_path: Path) -> Any:
        """Conditionals computed from a reference clip."""
        self.tts.prepare_conditionals(str(wav_path))
        conditionals, self.tts.conds = self.tts.conds, self._builtin
        return conditionals

    def health(self) -> dict[str, Any]:
        """Voices and chunking for /health."""
        return {"voices": len(self.voices), "chunk_tokens": self.chunk_size}

    def service_options(self, chunk_size: int | None, emotion: str | float | None) -> ServiceOptions:
        """``chunk_size``: speech tokens per streamed chunk (25 = 1 s); ``emotion``: exaggeration, named or 0-2."""
        options: dict[str, Any] = {}
        if chunk_size is not None:
            if chunk_size > 200:
                raise ValueError("chunk_size is speech tokens per chunk for Chatterbox: 1-200 (25 = 1 s)")
            options["chunk_tokens"] = chunk_size
        if isinstance(emotion, str):
            if emotion not in EMOTIONS:
                raise ValueError(f"emotion {emotion!r}: one of {', '.join(EMOTIONS)} or a number 0-2")
            options["exaggeration"] = EMOTIONS[emotion]
        elif emotion is not None:
            if not 0 <= emotion <= 2:
                raise ValueError("emotion as a number is Chatterbox's exaggeration, 0-2")
            options["exaggeration"] = float(emotion)
        return ServiceOptions(options=options)

    def generate(self, request: SynthesisRequest, session: Any, emit: Emit) -> None:
        """Stream chunks of ``request`` in its voice."""
        if request.voice is not None and request.voice not in self.voices:
            raise ValueError(f"unknown voice {request.voice!r}: register it with POST /voices")
        self.tts.conds = self.voices[request.voice] if request.voice else self._builtin
        max_samples = min(request.max_audio_ms or self.max_audio_ms, self.max_audio_ms) * self.sample_rate // 1000
        produced = 0
        stream = self.tts.generate_stream(
            request.text,
            exaggeration=request.options.get("exaggeration", 0.5),
            cfg_weight=request.options.get("cfg_weight", 0.5),
            temperature=request.options.get("temperature", 0.8),
            chunk_size=request.options.get("chunk_tokens", self.chunk_size),
            print_metrics=False,
        )
        try:
            for chunk, _metrics in stream:
                samples = chunk.reshape(-1).float().cpu().numpy()[: max_samples - produced]
                emit(samples)  # raises Cancelled after a cancel: the generator is closed below
                produced += len(samples)
                if produced >= max_samples:
                    break
        finally:
            stream.close()
            self.tts.conds = self._builtin
