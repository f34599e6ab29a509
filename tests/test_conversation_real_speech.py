"""bots/local.yaml on recordings of real people it was never tuned on: what the user hears, turn by turn.

Each test lays real utterances (vivavoce.testing.real_speech) on a timeline, plays it to the bot in real
time and reads the output WAV on the input's timeline. The utterances are ones where pipecat's stock
end of turn (Smart Turn alone, 3 s fallback) fails: finished sentences it calls unfinished, half sentences
it calls finished. Thresholds are far from the figures measured (bench/conversation.py): they separate
behaviours (a 3 s fallback from a prompt answer, an answer inside a pause from none), not speeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from vivavoce.file_session import FileRunResult, run_on_recording
from vivavoce.testing.conversation_eval import (
    REACTION_SECS,
    heard_segments,
    normalise_words,
    split_after_words,
    voiced_bounds,
)
from vivavoce.testing.real_speech import utterances
from vivavoce.wav import InputAudio

REPO = Path(__file__).resolve().parents[1]
RATE = 16000
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def corpus():
    return {u.id: u for u in utterances()}


@dataclass
class Spoken:
    """A stretch of user speech on the recording's timeline (seconds)."""

    text: str
    start: float
    end: float


class Timeline:
    """Builds a recording: speech clips and silences, remembering where the speech is."""

    def __init__(self, lead_secs: float = 0.5):
        self._clips: list[np.ndarray] = [np.zeros(int(lead_secs * RATE), np.int16)]
        self.spoken: list[Spoken] = []

    @property
    def now(self) -> float:
        return sum(len(c) for c in self._clips) / RATE

    def say(self, pcm: np.ndarray, text: str) -> Spoken:
        first, last = voiced_bounds(pcm)
        spoken = Spoken(text, self.now + first, self.now + last)
        self._clips.append(pcm)
        self.spoken.append(spoken)
        return spoken

    def wait(self, secs: float) -> None:
        self._clips.append(np.zeros(int(secs * RATE), np.int16))

    def audio(self) -> InputAudio:
        return InputAudio(Path("real-speech.wav"), np.concatenate(self._clips), RATE, 1)


def _first_audio_after(segments: list[tuple[float, float]], moment: float) -> float | None:
    return next((start for start, _ in segments if start >= moment), None)


def _sounding_frames(pcm: np.ndarray, since: float, until: float) -> tuple[float, float]:
    """Start of the first and end of the last 20 ms frame between the two times that is not digital
    silence (pipecat's own test: a peak above 20)."""
    step = RATE // 50
    first, last = int(since * RATE) // step, int(until * RATE) // step
    frames = pcm[first * step : last * step].reshape(-1, step)
    sounding = np.flatnonzero(np.abs(frames.astype(np.int32)).max(axis=1) > 20)
    return (first + sounding[0]) * step / RATE, (first + sounding[-1] + 1) * step / RATE


def _words(text: str) -> set[str]:
    return set(normalise_words(text))


FUNCTION_WORDS = {"a", "an", "the", "and", "of", "to", "in", "for", "on", "at", "it", "is", "was"}
"""Words every turn is likely to hold: a part is heard only if one of its other words is in a turn."""


async def test_finished_sentences_smart_turn_calls_unfinished_are_answered_without_the_fallback(
    local_bot, corpus
):
    # Smart Turn gives these finished sentences (a phone call, 8 kHz band) 0.03-0.10: pipecat's stock
    # strategy then waits for its 3 s silence fallback. The words say they are finished.
    timeline = Timeline()
    sentences = []
    for key in ("call-04", "call-07", "call-09"):
        sentences.append(timeline.say(corpus[key].pcm, corpus[key].text))
        timeline.wait(10.0)  # room for the whole answer: the next sentence must not barge into it
    result = await run_on_recording(local_bot, timeline.audio())
    heard = heard_segments(result.output_pcm, result.output_sample_rate)

    for sentence in sentences:
        answer = _first_audio_after(heard, sentence.end)
        assert answer is not None, f"no answer to {sentence.text!r}"
        # The fallback alone would put the answer >= 3 s after the end of speech.
        assert answer - sentence.end < 2.5, (sentence.text, answer - sentence.end)
    for sentence in sentences:
        turn = [t for t in result.turns if t.user_started_s is not None and t.user_started_s < sentence.end][-1]
        report = turn.to_dict()
        assert _words(report["user_text"]) & _words(sentence.text), (report, sentence.text)
        assert report["end_of_turn_ms"] is not None and report["end_of_turn_ms"] < 2000, report


async def test_a_quiet_hello_said_alone_is_answered(local_bot, corpus):
    # Diane's "Hello?" opening a phone call: 0.33 s of quiet voice. With pipecat's VAD defaults, which
    # bots/local.yaml had, Silero never reaches "speaking" on it: no turn, no answer, the caller hears nothing.
    timeline = Timeline()
    hello = timeline.say(corpus["call-01"].pcm, corpus["call-01"].text)
    timeline.wait(8.0)
    result = await run_on_recording(local_bot, timeline.audio())

    assert _first_audio_after(heard_segments(result.output_pcm, result.output_sample_rate), hello.end) is not None
    said = [t.user_text for t in result.turns if t.user_started_s is not None]
    assert said and "hello" in _words(said[0]), said


async def test_a_pause_inside_a_sentence_is_not_answered(local_bot, corpus):
    # Each sentence is cut in half at a word boundary with a 1 s pause; Smart Turn calls every first
    # half finished (p 0.86-0.97), the words do not ("The difference in the rainbow depends"). (Where
    # tiny.en mishears a half into a sentence of its own, "It was the season of" as "It was a season.",
    # the words cannot help: such halves are not here.)
    timeline = Timeline()
    pauses, halves = [], []
    # "He turned sharply, and | faced Gregson" (arctic-slt-a0009) is not here: its answer is sometimes
    # released before the VAD hears the soft "faced", and the second half becomes a turn of its own (a
    # weakness noted on issue 13, not a behaviour this test may depend on).
    for key in ("two-cities-03", "f5-rainbow-1"):
        utterance = corpus[key]
        first, second = split_after_words(utterance, [len(utterance.text.split()) // 2])
        before = timeline.say(first.pcm, first.text)
        timeline.wait(1.0)
        after = timeline.say(second.pcm, second.text)
        timeline.wait(10.0)
        pauses.append((before, after))
        halves.append((first.text, second.text))
    result = await run_on_recording(local_bot, timeline.audio())
    heard = heard_segments(result.output_pcm, result.output_sample_rate)

    for (before, after), (first, second) in zip(pauses, halves, strict=True):
        cut_in = [start for start, _ in heard if before.end <= start < after.start]
        assert not cut_in, f"the bot spoke {cut_in[0] - before.end:.2f}s into the pause after {first!r}"
        assert _first_audio_after(heard, after.end) is not None, f"no answer after {second!r}"
        # One turn holds both halves (allowing the small STT a misheard word).
        turn = [t for t in result.turns if t.user_started_s is not None and t.user_started_s < before.end][-1]
        said = _words(turn.user_text)
        assert said & _words(first) and said & _words(second), (turn.user_text, first, second)
    answered = [t for t in result.turns if t.bot_started_s is not None]
    assert len(answered) == 2, [t.user_text for t in answered]


async def test_the_report_says_what_the_user_heard(local_bot, corpus):
    # A long sentence, then a barge-in 2.5 s after it, while the bot is answering; then a last sentence.
    timeline = Timeline()
    first = timeline.say(corpus["two-cities-10"].pcm, corpus["two-cities-10"].text)
    timeline.wait(2.5)
    barge = timeline.say(corpus["arctic-awb-a0007"].pcm, corpus["arctic-awb-a0007"].text)
    timeline.wait(10.0)
    last = timeline.say(corpus["f5-nature-2"].pcm, corpus["f5-nature-2"].text)
    timeline.wait(7.0)
    result: FileRunResult = await run_on_recording(local_bot, timeline.audio())
    heard = heard_segments(result.output_pcm, result.output_sample_rate)
    turns = [t for t in result.turns if t.bot_started_s is not None]
    assert len(turns) == 3, [t.to_dict() for t in result.turns]

    speech_rates = []
    answers_at = [t.bot_started_s for t in turns[1:]] + [len(result.output_pcm) / RATE]
    for turn, (spoken, following), until in zip(
        turns, [(first, barge), (barge, last), (last, None)], answers_at, strict=True
    ):
        report = turn.to_dict()
        # Heard audio of this answer: from the end of the words it answers until the next answer starts.
        mine = [(s, e) for s, e in heard if spoken.end <= s < until - 0.05]
        assert mine, report
        # The WAV holds this answer from its first to its last frame that is not digital silence.
        first_frame, last_frame = _sounding_frames(result.output_pcm, spoken.end, until - 0.05)
        assert report["bot_started_s"] == pytest.approx(first_frame, abs=0.06), report
        assert report["bot_stopped_s"] == pytest.approx(last_frame, abs=0.06), report
        # Cut by the user: the answer sounded on past the VAD's start time into the next words. Audio that
        # ended from just before the words to that time cannot tell: a reply that ended by itself (nothing
        # stops audio before the VAD hears) or one in a gap between phrases whose rest the barge-in dropped.
        heard_end = mine[-1][1]
        cut_off = following is not None and heard_end >= following.start + REACTION_SECS
        undecidable = following is not None and following.start - 0.05 < heard_end < following.start + REACTION_SECS
        if not undecidable:
            assert report["interrupted"] == cut_off, (report, mine, following)
        assert report["bot_text"], report
        speech_rates.append((len(report["bot_text"]) / (mine[-1][1] - mine[0][0]), report["interrupted"]))

    # The interrupted answer's text is as long as its heard audio, at the rate the whole answers spoke:
    # not just the phrases that finished before the user cut in.
    assert any(cut for _, cut in speech_rates), "the barge-in did not cut the first answer"
    whole = [rate for rate, cut in speech_rates if not cut]
    for rate, cut in speech_rates:
        if cut:
            assert 0.6 < rate / (sum(whole) / len(whole)) < 1.6, speech_rates


@pytest.mark.parametrize(
    ("listed_id", "cuts"),
    [("f5-stella-main-2", [6, 10]),  # a long first part: the bot is stopped by its length
     # a short one, "He turned sharply": stopped by its words; "the table", right after, had been taken for
     # a backchannel over the reply just stopped, and lost (bench/conversation.py, 2026-11-30)
     ("arctic-slt-a0009", [3, 7]),
     # "And I'm": one word of meaning, taken for an acknowledgement; the user went on at once, and the
     # bot stopped, but the words had never joined the turn (a phone call, bench/conversation.py)
     ("call-08", [2, 5])],
)  # fmt: skip
async def test_nothing_the_user_says_over_the_bot_is_lost(local_bot, corpus, listed_id, cuts):
    # A sentence; 1.5 s later, while the bot answers, a sentence said in three parts with pauses.
    timeline = Timeline()
    timeline.say(corpus["two-cities-12"].pcm, corpus["two-cities-12"].text)
    timeline.wait(1.5)
    listed = corpus[listed_id]
    parts = split_after_words(listed, cuts)
    spoken = []
    for index, part in enumerate(parts):
        spoken.append(timeline.say(part.pcm, part.text))
        timeline.wait(0.6 if index < len(parts) - 1 else 8.0)
    result = await run_on_recording(local_bot, timeline.audio())
    heard = heard_segments(result.output_pcm, result.output_sample_rate)

    for part in spoken:
        overlapping = [
            t
            for t in result.turns
            if t.user_started_s is not None
            and t.user_started_s - 0.3 <= part.end
            and (t.user_stopped_s or 0.0) + 0.3 >= part.start
        ]
        said = set().union(*(_words(t.user_text) for t in overlapping)) if overlapping else set()
        assert said & (_words(part.text) - FUNCTION_WORDS), f"{part.text!r} is in no turn: " + str(
            [t.user_text for t in result.turns]
        )
    assert _first_audio_after(heard, spoken[-1].end) is not None, "the last part was never answered"


async def test_words_that_stop_the_bot_follow_its_reply_in_the_context(local_bot, corpus):
    # "Oh, hello." over the answer stops it by its words, and is answered at once. Its words had reached the LLM
    # before the reply, as heard, was added to the context: the LLM read the user's two utterances as one
    # message, as if it had said nothing in between, and the context kept them in that order.
    timeline = Timeline()
    first = timeline.say(corpus["two-cities-12"].pcm, corpus["two-cities-12"].text)
    timeline.wait(3.5)  # the bot is answering
    timeline.say(corpus["call-03"].pcm, corpus["call-03"].text)
    timeline.wait(8.0)
    result = await run_on_recording(local_bot, timeline.audio())

    answer = next(t for t in result.turns if _words(t.user_text) & _words(first.text) - FUNCTION_WORDS)
    assert answer.interrupted, f"the greeting did not stop the answer: {[t.to_dict() for t in result.turns]}"
    said = [(m["role"], str(m["content"])) for m in result.messages if m["role"] in ("user", "assistant")]
    greeting = next(i for i, (role, text) in enumerate(said) if role == "user" and "hello" in _words(text))
    assert said[greeting - 1][0] == "assistant", said  # the reply as heard, then the greeting
    assert answer.bot_text.split()[0].lower() in said[greeting - 1][1].lower(), said
    assert not _words(said[greeting][1]) & _words(first.text) - FUNCTION_WORDS, said
