"""Piper sentences cut to their sound: no silence before the first word, a pause after that fits the text.

Piper renders every piece of text it is given as a whole sentence: it starts with silence (usually
30-50 ms, but 0.5 s before some openings, e.g. "another example of how people can") and ends with a
sentence-final pause (100-250 ms). A reply spoken in pieces (``first_phrase``) glued those together: on real
speech the join inside "That was just | another example..." was 0.66 s of silence before any wait for the
LLM or the synthesis, counted as a stall by bench/conversation.py. So each sentence Piper returns starts
at its first sound, and keeps after its last sound a pause chosen by how it ends: a sentence's own pause
(capped), a clause break's shorter one, and next to nothing where the text stops mid-sentence and the next
piece goes on.

The worker's Piper engine applies the same rule (``vivavoce_worker.audio.trim_sentence``): the worker is a
separate package and cannot import the agent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
from piper import AudioChunk, PiperVoice

WINDOW_SECS = 0.005
SOUND_RMS = 0.003  # ~100 of PCM16's 32768: Piper's silences stay below 0.0005, its onsets pass 0.02
LEAD_SECS = 0.01  # kept before the first sound: a soft onset rises under the threshold
SENTENCE_PAUSE_SECS = 0.25  # at most, after ". ! ?" (Piper makes 0.1-0.25 s)
CLAUSE_PAUSE_SECS = 0.2  # at most, after ", ; :"
JOIN_SECS = 0.04  # after text that stops mid-sentence: the next piece goes on


def pause_after(phonemes: list[str], text: str) -> float:
    """The silence to keep after a sentence's last sound: by the punctuation Piper read last (espeak keeps
    it among the phonemes; it drops an ellipsis, so the text's own end decides then)."""
    spoken = [p for p in phonemes if p.strip()]
    last = spoken[-1] if spoken else ""
    if last not in ".?!,;:":
        last = text.rstrip()[-1:]
    if last in ".?!…":
        return SENTENCE_PAUSE_SECS
    if last in ",;:":
        return CLAUSE_PAUSE_SECS
    return JOIN_SECS


def trim_edges(samples: np.ndarray, rate: int, pause_secs: float) -> np.ndarray:
    """``samples`` from ``LEAD_SECS`` before their first sound to at most ``pause_secs`` after their last
    (unchanged when nothing in them is louder than ``SOUND_RMS``)."""
    step = max(1, int(rate * WINDOW_SECS))
    count = len(samples) // step
    if count == 0:
        return samples
    windows = samples[: count * step].reshape(count, step).astype(np.float64)
    loud = np.flatnonzero(np.sqrt((windows**2).mean(axis=1)) > SOUND_RMS)
    if len(loud) == 0:
        return samples
    start = max(0, int(loud[0]) * step - int(rate * LEAD_SECS))
    end = min(len(samples), (int(loud[-1]) + 1) * step + int(rate * pause_secs))
    return samples[start:end]


class EdgeTrimmedVoice:
    """A ``PiperVoice`` whose sentences are cut by :func:`trim_edges` (what pipecat's ``PiperTTSService``
    reads of a voice: ``config`` and ``synthesize``)."""

    def __init__(self, voice: PiperVoice):
        """Wrap a loaded voice."""
        self._voice = voice
        self.config = voice.config

    def synthesize(self, text: str, *args: Any, **kwargs: Any) -> Iterator[AudioChunk]:
        """Piper's sentences of ``text``, each cut to its sound and its pause (alignments are dropped: they
        would no longer match the samples)."""
        for chunk in self._voice.synthesize(text, *args, **kwargs):
            trimmed = trim_edges(chunk.audio_float_array, chunk.sample_rate, pause_after(chunk.phonemes, text))
            yield dataclasses.replace(
                chunk, audio_float_array=trimmed, phoneme_id_samples=None, phoneme_alignments=None,
                _audio_int16_array=None, _audio_int16_bytes=None, _phoneme_alignments=None,
            )  # fmt: skip
