"""Speech to play to a bot: the bundled recording, cut into phrases and re-spaced into a conversation.

``beckett.wav`` (real human speech, shipped by ``useful-moonshine-onnx``) is one speaker saying six short
phrases. Spaced with pauses long enough for the bot to answer, it makes a multi-turn conversation; spaced
with short pauses, one long utterance the bot can be interrupted by.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pipecat.audio.vad.silero import SileroVADAnalyzer

from vivavoce.packaged_models import speech_sample
from vivavoce.wav import InputAudio, read_wav

_WINDOW = 512  # Silero's window at 16 kHz (32 ms)


@dataclass(frozen=True)
class Phrase:
    """A stretch of speech in a recording, in samples."""

    start: int
    end: int


def voiced_span(pcm: np.ndarray, sample_rate: int = 16000) -> tuple[float, float]:
    """First and last loud 10 ms of a clip, in seconds."""
    step = sample_rate // 100
    frames = pcm[: len(pcm) // step * step].reshape(-1, step).astype(np.float64)
    rms = np.sqrt((frames**2).mean(axis=1))
    loud = np.flatnonzero(rms > max(100.0, 0.1 * rms.max()))
    return loud[0] * 0.01, (loud[-1] + 1) * 0.01


def find_phrases(pcm: np.ndarray, sample_rate: int = 16000, *, min_pause_secs: float = 0.25,
                 threshold: float = 0.5, pad_secs: float = 0.08) -> list[Phrase]:
    """Split 16 kHz speech at pauses, with Silero VAD (the model pipecat bundles)."""
    if sample_rate != 16000:
        raise ValueError("find_phrases expects 16 kHz audio")
    vad = SileroVADAnalyzer(sample_rate=sample_rate)
    vad.set_sample_rate(sample_rate)
    voiced = []
    for start in range(0, len(pcm) - _WINDOW + 1, _WINDOW):
        voiced.append(vad.voice_confidence(pcm[start : start + _WINDOW].tobytes()) >= threshold)
    phrases: list[Phrase] = []
    min_gap = int(min_pause_secs * sample_rate / _WINDOW)
    pad = int(pad_secs * sample_rate)
    index, count = 0, len(voiced)
    while index < count:
        if not voiced[index]:
            index += 1
            continue
        begin, silent = index, 0
        while index < count and silent <= min_gap:
            silent = 0 if voiced[index] else silent + 1
            index += 1
        end = index - silent
        phrases.append(Phrase(max(0, begin * _WINDOW - pad), min(len(pcm), end * _WINDOW + pad)))
    return phrases


def conversation(gap_secs: float = 7.0, *, lead_secs: float = 0.5, phrases_per_turn: int = 1) -> InputAudio:
    """The bundled recording's phrases, ``phrases_per_turn`` at a time, separated by ``gap_secs`` of silence."""
    source = read_wav(speech_sample())
    pcm, rate = source.pcm, source.sample_rate
    phrases = find_phrases(pcm, rate)
    parts = [np.zeros(int(lead_secs * rate), dtype=np.int16)]
    for first in range(0, len(phrases), phrases_per_turn):
        group = phrases[first : first + phrases_per_turn]
        parts += [pcm[group[0].start : group[-1].end], np.zeros(int(gap_secs * rate), dtype=np.int16)]
    return InputAudio(path=source.path, pcm=np.concatenate(parts), sample_rate=rate, channels=1)
