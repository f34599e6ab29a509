"""WAV files in and out: recordings played to a bot, and the bot's audio written back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile


class AudioFileError(ValueError):
    """The input is not usable audio; the message says why."""


@dataclass(frozen=True)
class InputAudio:
    """A recording as the transport feeds it: mono 16-bit PCM, and where it came from."""

    path: Path
    pcm: np.ndarray  # int16, mono, at `sample_rate`
    sample_rate: int
    channels: int

    @property
    def duration_secs(self) -> float:
        """Length in seconds."""
        return len(self.pcm) / self.sample_rate


def read_wav(path: str | Path) -> InputAudio:
    """Read a WAV (any rate, channel count and sample format) as mono int16.

    Raises :class:`AudioFileError` for a missing file, a file that is not audio, or an empty one.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"{path}: no such file")
    try:
        with soundfile.SoundFile(path) as audio:
            channels, rate = audio.channels, audio.samplerate
            samples = audio.read(dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioFileError(f"{path}: not a readable audio file ({e})") from None
    if len(samples) == 0:
        raise AudioFileError(f"{path}: the audio file is empty (0 samples)")
    mono = samples.mean(axis=1)
    pcm = np.clip(np.round(mono * 32767.0), -32768, 32767).astype(np.int16)
    return InputAudio(path=path, pcm=pcm, sample_rate=rate, channels=channels)


def write_wav(path: str | Path, pcm: np.ndarray, sample_rate: int) -> None:
    """Write mono int16 PCM as a WAV file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), pcm, sample_rate, subtype="PCM_16")
