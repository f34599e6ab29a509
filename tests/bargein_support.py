"""Speech and measurements for the barge-in tests: beckett phrases, Piper backchannels, the output track."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soxr
import yaml

from vivavoce.botfile import Bot, load_bot
from vivavoce.file_session import FileRunResult, run_on_recording
from vivavoce.packaged_models import speech_sample
from vivavoce.samples import find_phrases, voiced_span
from vivavoce.wav import InputAudio, read_wav

RATE = 16000
FRAME_SECS = 0.02
LOUD_RMS = 150.0  # the bot's speech is ~1000-4000 RMS; the output track is exact zeros between replies
BECKETT = ("Ever tried.", "Ever failed.", "No matter.", "Try again.", "Fail again.", "Fail better.")


def phrases() -> list[np.ndarray]:
    """The six phrases of the bundled real-speech recording (16 kHz), padded by 80 ms each side."""
    source = read_wav(speech_sample())
    assert source.sample_rate == RATE
    return [source.pcm[p.start : p.end] for p in find_phrases(source.pcm, RATE)]


def joined(indices: tuple[int, ...], *, gap_secs: float = 0.0) -> np.ndarray:
    """Phrases one after the other; with no extra gap (~0.16 s of padding) the VAD hears one stretch."""
    parts = phrases()
    gap = np.zeros(int(gap_secs * RATE), np.int16)
    pieces: list[np.ndarray] = []
    for index in indices:
        pieces += [parts[index], gap]
    return np.concatenate(pieces[:-1])


def backchannel(text: str, *, length_scale: float = 1.0) -> np.ndarray:
    """``text`` in Piper's voice at 16 kHz (``length_scale`` > 1: slower), trimmed to 50 ms around the speech.

    Without Piper's sampling noise, so a test hears the same sound every run (with it, tiny.en read
    "Mm-hm." as words in one rendering in three).
    """
    from piper import SynthesisConfig

    from vivavoce.processors.piper import load_voice

    voice = load_voice("en_US-joe-medium")
    config = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)
    chunks = voice.synthesize(text, syn_config=config)
    pcm = np.frombuffer(b"".join(c.audio_int16_bytes for c in chunks), np.int16)
    pcm = soxr.resample(pcm, voice.config.sample_rate, RATE).astype(np.int16)
    start, end = voiced_span(pcm)
    return pcm[max(0, int((start - 0.05) * RATE)) : int((end + 0.05) * RATE)]


class Script:
    """A recording built piece by piece, remembering where each spoken piece's speech lies."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.secs = 0.0

    def silence(self, secs: float) -> None:
        self.parts.append(np.zeros(max(0, int(round(secs * RATE))), np.int16))
        self.secs += len(self.parts[-1]) / RATE

    def say(self, pcm: np.ndarray) -> tuple[float, float]:
        """Append speech; returns (onset, end) of its voiced part on the recording's timeline."""
        at = self.secs
        self.parts.append(pcm)
        self.secs += len(pcm) / RATE
        start, end = voiced_span(pcm)
        return at + start, at + end

    def audio(self) -> InputAudio:
        return InputAudio(Path("bargein.wav"), np.concatenate(self.parts), RATE, 1)


def loud_frames(pcm: np.ndarray) -> np.ndarray:
    """Per 20 ms frame of the output track: is the bot audible."""
    step = int(FRAME_SECS * RATE)
    frames = pcm[: len(pcm) // step * step].reshape(-1, step).astype(np.float64)
    return np.sqrt((frames**2).mean(axis=1)) > LOUD_RMS


def loud_secs(loud: np.ndarray, start_s: float, end_s: float) -> float:
    """Seconds of audible bot audio between start_s and end_s."""
    return float(loud[max(0, int(start_s / FRAME_SECS)) : max(0, int(end_s / FRAME_SECS))].sum()) * FRAME_SECS


async def run_with_pauses(bot: Bot, audio: InputAudio) -> tuple[FileRunResult, list[tuple[float, bool]]]:
    """run_on_recording, plus the pauses the barge-in controller asked for."""
    result = await run_on_recording(bot, audio)
    return result, result.pauses


def bot_variant(base: Path, directory: Path, **interruptions) -> Bot:
    """``base`` with turn_taking.interruptions updated, written to ``directory`` and loaded."""
    data = yaml.safe_load(base.read_text())
    data.setdefault("turn_taking", {}).setdefault("interruptions", {}).update(interruptions)
    path = directory / f"{base.stem}-variant.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_bot(path)
