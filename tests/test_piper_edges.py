"""Piper sentences cut to their sound (processors/piper_edges.py, and the worker's copy of the rule), on the
real packaged voice: the joins of a reply's pieces, the pauses kept, the two copies agreeing."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from piper import SynthesisConfig

from vivavoce.processors.piper import SharedPiperTTSService, load_voice
from vivavoce.processors.piper_edges import EdgeTrimmedVoice, pause_after, trim_edges
from worker_support import REPO

sys.path.insert(0, str(REPO / "workers" / "common"))

from vivavoce_worker.audio import trim_sentence  # noqa: E402

# The pieces first_phrase made of a real reply in bench/conversation.py; Piper opens the second with 0.5 s
# of silence (in 11 of 12 renderings; always without its sampling noise, as here).
OPENING, GOES_ON = "That was just", "another example of how people can"
EXACT = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)  # the same audio every time


@pytest.fixture(scope="module")
def voice():
    return load_voice("en_US-joe-medium")


def silent_edges(samples: np.ndarray, rate: int) -> tuple[float, float]:
    """Seconds before the first and after the last 5 ms window louder than -50 dBFS."""
    step = rate // 200
    windows = samples[: len(samples) // step * step].reshape(-1, step)
    loud = np.flatnonzero(np.sqrt((windows.astype(np.float64) ** 2).mean(axis=1)) > 10 ** (-50 / 20))
    return loud[0] * step / rate, (len(windows) - 1 - loud[-1]) * step / rate


def spoken(voice, text: str) -> np.ndarray:
    return np.concatenate([chunk.audio_float_array for chunk in voice.synthesize(text, EXACT)])


def test_a_reply_spoken_in_pieces_joins_without_piper_s_sentence_silences(voice):
    rate = voice.config.sample_rate
    raw_join = silent_edges(spoken(voice, OPENING), rate)[1] + silent_edges(spoken(voice, GOES_ON), rate)[0]
    assert raw_join > 0.4  # what was heard as a stall: so the figure below means something
    trimmed = EdgeTrimmedVoice(voice)
    first, then = spoken(trimmed, OPENING), spoken(trimmed, GOES_ON)
    assert silent_edges(first, rate)[1] + silent_edges(then, rate)[0] < 0.1
    assert silent_edges(first, rate)[0] < 0.02  # the reply's first sound comes at once


def test_sentences_and_clauses_keep_their_pauses(voice):
    rate = voice.config.sample_rate
    trimmed = EdgeTrimmedVoice(voice)
    chunks = list(trimmed.synthesize("Sorry about that. What kind of thing is this?", EXACT))
    assert len(chunks) == 2
    for chunk in chunks:
        assert 0.1 <= silent_edges(chunk.audio_float_array, rate)[1] <= 0.25 + 0.01
    clause = spoken(trimmed, "I'm sorry,")
    assert 0.1 <= silent_edges(clause, rate)[1] <= 0.2 + 0.01
    # The words are all still there: everything from the first sound to the last is kept.
    raw = spoken(voice, GOES_ON)
    lead, trail = silent_edges(raw, rate)
    assert len(spoken(trimmed, GOES_ON)) >= len(raw) - (lead + trail) * rate


def test_the_pause_follows_the_punctuation_read_last():
    assert pause_after(["a", "t", "."], "that.") == pytest.approx(0.25)
    assert pause_after(["i", ",", " "], "sorry,") == pytest.approx(0.2)
    assert pause_after(["ʌ", "s", "t"], "That was just") == pytest.approx(0.04)
    assert pause_after(["ə", "m"], "Wisdom...") == pytest.approx(0.25)  # espeak drops an ellipsis


def test_silence_and_empty_audio_are_left_as_they_are():
    assert len(trim_edges(np.zeros(22050, dtype=np.float32), 22050, 0.3)) == 22050
    assert len(trim_edges(np.zeros(10, dtype=np.float32), 22050, 0.3)) == 10


def test_the_worker_cuts_piper_s_sentences_exactly_as_the_agent_does(voice):
    text = "I'm sorry, but that was just another example of how people can be wrong. Wisdom... Really? Then"
    chunks = list(voice.synthesize(text, EXACT))
    assert len(chunks) >= 3
    for chunk in chunks:
        agent = trim_edges(chunk.audio_float_array, chunk.sample_rate, pause_after(chunk.phonemes, text))
        worker = trim_sentence(chunk.audio_float_array, chunk.sample_rate, chunk.phonemes, text)
        assert len(agent) < len(chunk.audio_float_array)
        np.testing.assert_array_equal(worker, agent)


def test_the_piper_kind_cuts_unless_told_not_to(voice):
    assert isinstance(SharedPiperTTSService(voice=voice, voice_name="en_US-joe-medium")._voice, EdgeTrimmedVoice)
    raw = SharedPiperTTSService(voice=voice, voice_name="en_US-joe-medium", trim_silence=False)
    assert raw._voice is voice  # pipecat's stock audio, as bench/conversation.py's pipecat variant plays it
