"""The Chatterbox worker's server, voices and protocol code over a TEST engine (tests only).

chatterbox-streaming cannot be installed on CI's torch (see workers/README.md), so its server code is
tested with ``ToneTestEngine``: real, deterministic audio (a tone whose pitch is measured from the
registered reference clip) produced chunk by chunk through the same engine interface. Run by
tests/test_workers_chatterbox.py in the CSM worker's environment:

    PYTHONPATH=workers/chatterbox workers/csm/.venv/bin/python tests/chatterbox_test_worker.py --port N ...
"""

from __future__ import annotations

import argparse
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from vivavoce_chatterbox.voices import voice_routers
from vivavoce_worker.cli import add_common_args, run_worker
from vivavoce_worker.engine import Emit, Engine, SynthesisRequest

CHUNK_SECS = 0.08
SECS_PER_CHAR = 0.06
BUILTIN_HZ = 220.0
PACE = 8  # times faster than real time


def pitch_hz(path: Path) -> float:
    """Fundamental of a clip from its zero crossings (enough for the pure tones the tests register)."""
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels())[:, 0]
    crossings = np.count_nonzero(np.diff(np.signbit(samples.astype(np.int32))))
    return crossings / 2 / (len(samples) / rate)


class ToneTestEngine(Engine):
    """A test stand-in for ``ChatterboxEngine``: a voice is a pitch, speech is a tone."""

    name = "chatterbox-test"
    sample_rate = 24000

    def __init__(self) -> None:
        self.voices: dict[str, Any] = {}

    def load(self) -> None:
        pass

    def make_voice(self, wav_path: Path) -> float:
        return pitch_hz(wav_path)

    def generate(self, request: SynthesisRequest, session: Any, emit: Emit) -> None:
        if request.voice is not None and request.voice not in self.voices:
            raise ValueError(f"unknown voice {request.voice!r}: register it with POST /voices")
        hz = self.voices[request.voice] if request.voice else BUILTIN_HZ
        amplitude = 0.2 + 0.3 * request.options.get("exaggeration", 0.5)
        seconds = min(len(request.text) * SECS_PER_CHAR, (request.max_audio_ms or 60_000) / 1000)
        chunk = int(CHUNK_SECS * self.sample_rate)
        t = np.arange(int(seconds * self.sample_rate)) / self.sample_rate
        tone = (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)
        for start in range(0, len(tone), chunk):
            time.sleep(CHUNK_SECS / PACE)  # a model's pace: cancels can land mid-utterance
            emit(tone[start : start + chunk])


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(), default_port=0)
    parser.add_argument("--voices-dir", type=Path, required=True)
    args = parser.parse_args()
    engine = ToneTestEngine()
    run_worker(engine, args, routers_for=voice_routers(engine, args.voices_dir))


if __name__ == "__main__":
    main()
