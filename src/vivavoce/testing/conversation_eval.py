"""Real-speech conversation scenarios, and what a user hears of a bot's answers to them.

Cases are built from real recordings (:mod:`vivavoce.testing.real_speech`): a finished utterance, one split
by a mid-sentence pause, a spoken list, a backchannel over the bot's answer, a barge-in. A few cases are
laid end to end into one session recording (:func:`session_audio`); after a bot has heard it, the output
WAV (sample ``i`` is the same instant as input sample ``i``) is scored against where each user part lies
(:func:`score_session`), with the bot's own report beside it. :func:`summarise` turns the per-case
records into figures. ``bench/conversation.py`` is the command line over this module.

Everything is measured on what the user hears: bot audio is 20 ms frames louder than ``LOUD_RMS``,
joined across gaps shorter than ``JOIN_SECS`` (:func:`heard_segments`).
"""

from __future__ import annotations

import difflib
import itertools
import random
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from loguru import logger

if TYPE_CHECKING:
    from vivavoce.turns import Turn

RATE = 16000
FRAME_SECS = 0.02
LOUD_RMS = 100.0
"""int16 RMS above which a 20 ms output frame is bot speech (the output is exact zeros between replies)."""
JOIN_SECS = 0.06
"""Quieter gaps shorter than this are inside one stretch of bot speech."""
OVERLAP_SECS = 0.3
"""A report turn belongs to a user part if its user speech overlaps the part widened by this much."""
DEAD_AIR_SECS = 1.5
STALL_SECS = 0.4
REACTION_SECS = 0.04
"""No interruption can stop a reply sooner after the user's first sound as measured here (a part's first 10 ms
frame within 30 dB of its peak, which can trail what Silero hears). vivavoce's VAD starts at 64 ms and pauses
the output within a frame: its cut replies end 0.05-0.12 s after that sound, mid-sentence (2026-12-01 16:41
run). 0.2 until then, when every variant's VAD started at 0.2 s."""
STALL_WITHIN_SECS = 4.0
BACKCHANNEL_RESUME_SECS = 1.5
BARGE_QUIET_SECS = 0.3

KINDS = ("finished", "split", "list", "backchannel", "barge_in")
DEFAULT_MIX: dict[str, int] = {"finished": 40, "split": 12, "list": 4, "backchannel": 4, "barge_in": 4}
_ORDER_PRIORITY = {"finished": 0, "split": 1, "backchannel": 2, "barge_in": 3, "list": 4}
BACKCHANNEL_WORDS = ("yes", "yeah", "okay", "right", "well", "no", "oh", "sure", "ok", "so", "now")
"""Words cut from the corpus as backchannels, most wanted first; failing them, the shortest word found."""

SPLIT_PAUSE_SECS = (0.4, 1.2)
LIST_PAUSE_SECS = (0.5, 0.9)
BACKCHANNEL_AFTER_SECS = (1.6, 2.0)  # after the user's utterance ends: the bot is ~1 s into its answer
BARGE_AFTER_SECS = (1.8, 2.2)
MAX_BACKCHANNEL_SECS = 0.6
BACKCHANNEL_TAIL_SECS = 1.5  # the answer pauses ~1-1.5 s for a backchannel, so it ends that much later

Expect = Literal["answer", "speak_over", "wait", "ignore"]
"""What the bot should do after a piece: answer it (scored); be answering it when the next piece comes
(a backchannel or barge-in follows); wait (the user is mid-utterance); ignore it (a backchannel: keep talking)."""


class UtteranceLike(Protocol):
    """What :func:`build_cases` needs of :class:`vivavoce.testing.real_speech.Utterance`."""

    id: str
    speaker: str
    text: str
    pcm: np.ndarray  # int16, 16 kHz, mono, trimmed to speech with ~0.1 s margins


@dataclass(frozen=True)
class Word:
    """A word Whisper heard, in seconds into its clip."""

    text: str
    start: float
    end: float


@dataclass
class Piece:
    """A stretch of real speech a case plays: a whole utterance, part of one, or one word."""

    pcm: np.ndarray  # int16, 16 kHz
    text: str  # reference transcript of this stretch
    speaker: str
    source: str  # utterance id, with the words taken when it is part of one
    expect: Expect
    after_s: float = 0.0  # silence between the previous piece's speech and this one's (first piece: unused)


@dataclass
class Case:
    """One scenario: pieces of real speech and the silences between them."""

    id: str
    kind: str
    pieces: list[Piece]
    tail_s: float = 0.0
    """Silence added to the session's gap after this case (a backchannel pauses the answer, which then
    ends later)."""

    @property
    def speakers(self) -> list[str]:
        """Who speaks in it, in order of first appearance."""
        return list(dict.fromkeys(p.speaker for p in self.pieces))

    @property
    def reference(self) -> str:
        """What the user says, backchannels left out."""
        return " ".join(p.text for p in self.pieces if p.expect != "ignore")


@dataclass(frozen=True)
class Part:
    """A piece placed in a session recording; times are its speech (loud 10 ms frames), in seconds."""

    id: str  # "<case id>.<index>"
    case_id: str
    kind: str
    index: int
    text: str
    speaker: str
    source: str
    expect: Expect
    start_s: float
    end_s: float
    pause_before_s: float | None  # silence since the previous part of the same case


# --- text -----------------------------------------------------------------------------------------------


_WORD_BREAKS = re.compile("[-\u2010-\u2015/]")
"""Hyphens, dashes and slashes part words: "twenty-one" and "twenty one" are the same two words (ASR and
transcripts hyphenate inconsistently, and a WER should not count that as an error)."""


def normalise_words(text: str) -> list[str]:
    """The words of ``text`` as a WER compares them: lower case, split on white space, hyphens, dashes and
    slashes, other punctuation dropped (an apostrophe inside a word kept, a curly one made straight).
    Digits stay digits ("21" and "twenty one" differ): cases are aligned on these; scores use
    :func:`scored_words`."""
    tokens = []
    for raw in _WORD_BREAKS.sub(" ", text.lower().replace("\u2019", "'")).split():
        token = re.sub(r"[^a-z0-9']", "", raw).strip("'")
        if token:
            tokens.append(token)
    return tokens


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(number: int) -> list[str]:
    """``number`` (0-999) as it is said: 6 -> ["six"], 21 -> ["twenty", "one"], 105 -> ["one", "hundred", "five"]."""
    if number < 20:
        return [_ONES[number]]
    if number < 100:
        return [_TENS[number // 10]] + ([_ONES[number % 10]] if number % 10 else [])
    return [_ONES[number // 100], "hundred"] + (number_words(number % 100) if number % 100 else [])


def scored_words(text: str) -> list[str]:
    """:func:`normalise_words`, with numbers under 1000 spelled out as said: Whisper writes "Six spoons" as
    "6 spoons", which is the word heard, not an error (as Whisper's own English normaliser counts it).
    The case builder aligns on :func:`normalise_words`, so the cases do not change."""
    words = []
    for word in normalise_words(text):
        words.extend(number_words(int(word)) if word.isdigit() and int(word) < 1000 else [word])
    return words


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance (substitutions + deletions + insertions) between two sequences: of words, or
    the letters of a string."""
    row = list(range(len(hypothesis) + 1))
    for i, wanted in enumerate(reference, 1):
        diagonal, row[0] = row[0], i
        for j, got in enumerate(hypothesis, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (wanted != got))
    return row[-1]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words), on :func:`scored_words`."""
    ref = scored_words(reference)
    return edit_distance(ref, scored_words(hypothesis)), len(ref)


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> float:
    """Word error rate over (reference, hypothesis) pairs: all errors over all reference words."""
    errors = words = 0
    for reference, hypothesis in pairs:
        e, n = word_errors(reference, hypothesis)
        errors, words = errors + e, words + n
    return errors / max(1, words)


# --- audio helpers --------------------------------------------------------------------------------------


def voiced_bounds(pcm: np.ndarray, rate: int = RATE) -> tuple[float, float]:
    """First and last speech of a clip, in seconds: 10 ms frames within 30 dB of its loudest (and RMS > 100).

    A click or breath of less than 80 ms, 0.2 s or more away from the rest, is not speech: a recording's
    margins can hold one, and the VAD does not fire on it.
    """
    step = rate // 100
    if len(pcm) < step:
        return 0.0, len(pcm) / rate
    frames = pcm[: len(pcm) // step * step].reshape(-1, step).astype(np.float64)
    rms = np.sqrt((frames**2).mean(axis=1))
    loud = np.flatnonzero(rms > max(100.0, 0.0316 * rms.max()))
    if not len(loud):
        return 0.0, len(pcm) / rate
    groups: list[list[int]] = [[int(loud[0])]]
    for index in loud[1:]:
        if index - groups[-1][-1] > 20:
            groups.append([])
        groups[-1].append(int(index))
    kept = [g for g in groups if len(g) >= 8] or groups
    return kept[0][0] * 0.01, (kept[-1][-1] + 1) * 0.01


def _quietest(pcm: np.ndarray, lo_s: float, hi_s: float, rate: int = RATE) -> int:
    """The sample at the centre of the quietest 10 ms within lo_s..hi_s (Whisper's word times are
    approximate: the quietest point near them is where the words really part)."""
    step = rate // 100
    lo, hi = max(0, int(lo_s * rate)), min(len(pcm), int(hi_s * rate))
    if hi - lo < step:
        return min(len(pcm), max(0, int((lo_s + hi_s) / 2 * rate)))
    best, best_rms = lo, float("inf")
    for start in range(lo, hi - step + 1, step // 2):
        rms = float(np.sqrt((pcm[start : start + step].astype(np.float64) ** 2).mean()))
        if rms < best_rms:
            best, best_rms = start, rms
    return best + step // 2


def _faded(pcm: np.ndarray, fade_in: bool, fade_out: bool, secs: float = 0.005) -> np.ndarray:
    """5 ms linear fades where a clip was cut out of running audio, so the cut makes no click."""
    n = min(len(pcm) // 2, int(secs * RATE))
    out = pcm.astype(np.float32)
    if n and fade_in:
        out[:n] *= np.linspace(0.0, 1.0, n, endpoint=False)
    if n and fade_out:
        out[-n:] *= np.linspace(1.0, 0.0, n, endpoint=False)
    return np.round(out).astype(np.int16)


# --- word timestamps ------------------------------------------------------------------------------------

_whisper_model: Any = None
_word_cache: dict[str, list[Word]] = {}


def whisper_words(key: str, pcm: np.ndarray) -> list[Word]:
    """Word timestamps of a 16 kHz clip from faster-whisper tiny.en (cached by ``key``)."""
    global _whisper_model
    if key in _word_cache:
        return _word_cache[key]
    if _whisper_model is None:
        from faster_whisper import WhisperModel

        from vivavoce.packaged_models import whisper_tiny_en

        _whisper_model = WhisperModel(str(whisper_tiny_en()), compute_type="int8")
    segments, _ = _whisper_model.transcribe(pcm.astype(np.float32) / 32768.0, word_timestamps=True, language="en")
    words = [Word(w.word.strip(), float(w.start), float(w.end)) for s in segments for w in (s.words or [])]
    _word_cache[key] = [w for w in words if normalise_words(w.text)]
    return _word_cache[key]


WordsFn = Callable[[str, np.ndarray], list[Word]]


def _aligned(reference: list[str], words: list[Word]) -> dict[int, int]:
    """Whisper word index -> reference word index, for the words both agree on (difflib's matching blocks)."""
    heard = [" ".join(normalise_words(w.text)) for w in words]
    wanted = [" ".join(normalise_words(r)) for r in reference]
    matcher = difflib.SequenceMatcher(a=heard, b=wanted, autojunk=False)
    mapping: dict[int, int] = {}
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            mapping[block.a + k] = block.b + k
    return mapping


def _boundaries(utterance: UtteranceLike, words: list[Word]) -> list[tuple[int, int]]:
    """Cuts both sources agree on: (sample to cut at, reference words before the cut).

    A boundary between Whisper words i and i+1 counts only if both matched adjacent reference words,
    so the reference text splits there without guessing.
    """
    reference = [w for w in utterance.text.split() if normalise_words(w)]
    mapping = _aligned(reference, words)
    cuts = []
    for i in range(len(words) - 1):
        if i in mapping and i + 1 in mapping and mapping[i + 1] == mapping[i] + 1:
            end, start = words[i].end, words[i + 1].start
            middle = (end + start) / 2
            sample = _quietest(utterance.pcm, min(end, middle) - 0.03, max(start, middle) + 0.03)
            cuts.append((sample, mapping[i] + 1))
    return cuts


def _cut(utterance: UtteranceLike, cuts: Sequence[tuple[int, int]], expects: Sequence[Expect],
         pauses: Sequence[float]) -> list[Piece]:
    """The utterance cut at ``cuts`` (from :func:`_boundaries`) into pieces, with the given pauses between."""
    reference = [w for w in utterance.text.split() if normalise_words(w)]
    samples = [0] + [c[0] for c in cuts] + [len(utterance.pcm)]
    counts = [0] + [c[1] for c in cuts] + [len(reference)]
    pieces = []
    for k in range(len(samples) - 1):
        pcm = _faded(utterance.pcm[samples[k] : samples[k + 1]], fade_in=k > 0, fade_out=k < len(samples) - 2)
        text = " ".join(reference[counts[k] : counts[k + 1]])
        pieces.append(Piece(pcm, text, utterance.speaker, f"{utterance.id}[{counts[k]}:{counts[k + 1]}]",
                            expects[k], after_s=0.0 if k == 0 else pauses[k - 1]))  # fmt: skip
    return pieces


STT_PRE_ROLL_SECS = 1.0
"""pipecat's segmented STT keeps this much audio from before the VAD fires."""
VAD_AFTER_ONSET_SECS = 0.1
"""The VAD fires about this long after speech starts (``start_secs`` 0.064 and Silero's ramp: p50 100 ms in
bench/vad_words.py)."""
STT_TRAILING_SILENCE_SECS = 0.2


def stt_segment_after_pause(first: np.ndarray, second: np.ndarray, pause_s: float) -> np.ndarray:
    """The segment pipecat's segmented STT hands over for ``second`` (int16, 16 kHz) said ``pause_s`` after
    ``first``: its pre-roll from before the VAD fired (the pause, and after a short one the end of
    ``first``), ``second``, and the trailing silence."""
    spoken = np.concatenate([first, np.zeros(int(pause_s * RATE), np.int16), second])
    onset = len(first) + int(pause_s * RATE)
    start = max(0, onset + int((VAD_AFTER_ONSET_SECS - STT_PRE_ROLL_SECS) * RATE))
    return np.concatenate([spoken[start:], np.zeros(int(STT_TRAILING_SILENCE_SECS * RATE), np.int16)])


def split_after_words(utterance: UtteranceLike, counts: Sequence[int], *, words: WordsFn | None = None) -> list[Piece]:
    """``utterance`` cut after each of ``counts`` reference words (at the silence between two words both
    Whisper and the transcript agree on; the nearest such boundary), as pieces to lay out with pauses."""
    heard = (words or whisper_words)(utterance.id, utterance.pcm)
    boundaries = _boundaries(utterance, heard)
    if not boundaries:
        raise ValueError(f"{utterance.id}: no word boundary Whisper and the transcript agree on")
    cuts = [min(boundaries, key=lambda cut, n=n: abs(cut[1] - n)) for n in counts]
    return _cut(utterance, cuts, ["wait"] * len(cuts) + ["answer"], [0.0] * len(cuts))


def _pick_cuts(utterance: UtteranceLike, words: list[Word], fractions: Sequence[float], *,
               prefer_punctuation: float = 0.0) -> list[tuple[int, int]] | None:
    """The agreed boundaries nearest to these fractions of the speech's duration, every piece >= 2 words.

    ``prefer_punctuation``: a boundary after a comma or full stop wins over one this fraction of the
    duration nearer the target (a spoken list pauses between its items).
    """
    cuts = _boundaries(utterance, words)
    reference = [w for w in utterance.text.split() if normalise_words(w)]
    total = len(reference)
    start, end = voiced_bounds(utterance.pcm)
    chosen: list[tuple[int, int]] = []
    for fraction in fractions:
        target = (start + fraction * (end - start)) * RATE
        floor = chosen[-1][1] + 2 if chosen else 2
        left = len(fractions) - len(chosen) - 1  # pieces still to come after this cut, 2 words each
        ok = [c for c in cuts if floor <= c[1] <= total - 2 * (left + 1) and (not chosen or c[0] > chosen[-1][0])]
        if not ok:
            return None
        span = max(end - start, 0.1) * RATE

        def cost(cut: tuple[int, int], target: float = target, span: float = span) -> float:
            unpunctuated = reference[cut[1] - 1][-1] not in ",.;:?!"
            return abs(cut[0] - target) / span + prefer_punctuation * unpunctuated

        chosen.append(min(ok, key=cost))
    return chosen


def word_alone(utterance: UtteranceLike, words: list[Word], i: int) -> np.ndarray:
    """Word ``i`` of ``utterance`` as if said alone: cut at the quietest points between it and its neighbours,
    never more than 0.1 s out from the word, and faded in and out."""
    word = words[i]
    before = words[i - 1].end if i > 0 else word.start - 0.1
    after = words[i + 1].start if i + 1 < len(words) else word.end + 0.1
    lo = _quietest(utterance.pcm, max(min(before, word.start) - 0.03, word.start - 0.1), word.start + 0.03)
    hi = _quietest(utterance.pcm, word.end - 0.03, min(max(after, word.end) + 0.03, word.end + 0.1))
    return _faded(utterance.pcm[lo:hi], True, True)


def backchannel_piece(utterance: UtteranceLike, words: list[Word], wanted: Iterable[str] | None) -> Piece | None:
    """One word cut out of ``utterance`` (:func:`word_alone`): the first of ``wanted`` found (None: the
    shortest word), <= 0.6 s."""
    reference = {" ".join(normalise_words(w)) for w in utterance.text.split()}
    candidates = []
    for i, word in enumerate(words):
        token = " ".join(normalise_words(word.text))
        if wanted is not None and (token not in wanted or token not in reference):
            continue
        if word.end - word.start > MAX_BACKCHANNEL_SECS + 0.1:
            continue
        pcm = word_alone(utterance, words, i)
        start, end = voiced_bounds(pcm)
        if not 0.15 <= end - start <= MAX_BACKCHANNEL_SECS:
            continue
        candidates.append((end - start, token, Piece(pcm, token.capitalize(), utterance.speaker,
                                                      f"{utterance.id}:{token}", "ignore")))  # fmt: skip
    if not candidates:
        return None
    if wanted is None:
        return min(candidates, key=lambda c: c[0])[2]
    order = list(wanted)
    return min(candidates, key=lambda c: (order.index(c[1]), c[0]))[2]


# --- building the evaluation set ------------------------------------------------------------------------


class _Dealer:
    """Hands out utterances round-robin over speakers, each speaker's in a seeded order, each once."""

    def __init__(self, utterances: Sequence[UtteranceLike], rng: random.Random):
        by_speaker: dict[str, list[UtteranceLike]] = defaultdict(list)
        for utterance in sorted(utterances, key=lambda u: u.id):
            by_speaker[utterance.speaker].append(utterance)
        self.speakers = sorted(by_speaker)
        rng.shuffle(self.speakers)
        for speaker in self.speakers:
            rng.shuffle(by_speaker[speaker])
        self._by_speaker = by_speaker
        self._next = 0
        self.used: set[str] = set()
        self.reusing = False

    def candidates(
        self, accept: Callable[[UtteranceLike], bool], speaker: str | None = None
    ) -> Iterable[UtteranceLike]:
        """Unused utterances that ``accept``, taking speakers in turn (only ``speaker``'s if given)."""
        if speaker is not None:
            yield from (u for u in self._by_speaker[speaker] if u.id not in self.used and accept(u))
            return
        seen: set[str] = set()
        count = len(self.speakers)
        while True:
            for turn in range(count):
                index = (self._next + turn) % count
                mine = self._by_speaker[self.speakers[index]]
                pending = next((u for u in mine if u.id not in self.used and u.id not in seen and accept(u)), None)
                if pending is not None:
                    self._next = (index + 1) % count
                    seen.add(pending.id)
                    yield pending
                    break
            else:
                return

    def take(self, accept: Callable[[UtteranceLike], bool], speaker: str | None = None) -> UtteranceLike | None:
        """The next unused utterance that ``accept``, marked used; once every such one is used, a new round
        over the whole corpus begins (a small corpus serves a large mix twice). With ``speaker``: theirs
        only, None once they have none left."""
        for _ in range(2):
            for utterance in self.candidates(accept, speaker):
                self.used.add(utterance.id)
                return utterance
            if speaker is not None or not any(accept(u) for us in self._by_speaker.values() for u in us):
                return None
            if not self.reusing:
                logger.warning("conversation_eval: the corpus ran out of fresh utterances; reusing them")
            self.reusing = True
            self.used.clear()
        return None


def _word_count(utterance: UtteranceLike) -> int:
    return len(normalise_words(utterance.text))


def _inner_punctuation(utterance: UtteranceLike) -> int:
    """Commas and stops inside the transcript (not after its last word)."""
    return sum(w[-1] in ",.;:?!" for w in utterance.text.split()[:-1])


def build_cases(
    utterances: Sequence[UtteranceLike],
    seed: int = 0,
    mix: dict[str, int] | None = None,
    *,
    words: WordsFn = whisper_words,
) -> list[Case]:
    """The evaluation set, deterministic for a seed, in stratified order (see :func:`stratified`).

    ``words(key, pcm)`` gives word timestamps (default: faster-whisper tiny.en); only utterances
    considered for split, list and backchannel cases are transcribed.
    """
    mix = {**DEFAULT_MIX, **(mix or {})}
    rng = random.Random(seed)
    dealer = _Dealer(utterances, rng)
    cases: dict[str, list[Case]] = {kind: [] for kind in KINDS}

    def tried(accept: Callable[[UtteranceLike], bool], make: Callable[[UtteranceLike], Case | None],
              count: int, kind: str, tries: int = 6, warn: bool = True) -> None:
        # An utterance Whisper and the reference disagree on is skipped (marked used), not retried.
        while len(cases[kind]) < count:
            made = None
            for _ in range(max(1, tries)):
                candidate = next(iter(dealer.candidates(accept)), None)
                if candidate is None:
                    break
                dealer.used.add(candidate.id)
                made = make(candidate)
                if made is not None:
                    break
            if made is None:
                if warn:
                    logger.warning(f"conversation_eval: only {len(cases[kind])} {kind} cases could be built")
                return
            cases[kind].append(made)

    def split_case(utterance: UtteranceLike) -> Case | None:
        cuts = _pick_cuts(utterance, words(utterance.id, utterance.pcm), [0.5])
        if cuts is None:
            return None
        pause = round(rng.uniform(*SPLIT_PAUSE_SECS), 3)
        return Case(f"split-{len(cases['split']):02d}", "split", _cut(utterance, cuts, ["wait", "answer"], [pause]))

    def list_case(utterance: UtteranceLike) -> Case | None:
        cuts = _pick_cuts(utterance, words(utterance.id, utterance.pcm), [1 / 3, 2 / 3], prefer_punctuation=0.2)
        if cuts is None:
            return None
        pauses = [round(rng.uniform(*LIST_PAUSE_SECS), 3) for _ in range(2)]
        return Case(f"list-{len(cases['list']):02d}", "list", _cut(utterance, cuts, ["wait", "wait", "answer"], pauses))

    def whole(utterance: UtteranceLike, expect: Expect, after: float = 0.0) -> Piece:
        return Piece(utterance.pcm, utterance.text.strip(), utterance.speaker, utterance.id, expect, after)

    # Backchannel words first: they need transcribing, and the utterances holding the wanted words are few.
    backchannels: list[Piece] = []
    if mix["backchannel"]:
        def holds(wanted: str) -> Callable[[UtteranceLike], bool]:
            return lambda u: wanted in normalise_words(u.text) and _word_count(u) >= 2

        for wanted in BACKCHANNEL_WORDS:
            for utterance in itertools.islice(dealer.candidates(holds(wanted)), 4):
                piece = backchannel_piece(utterance, words(utterance.id, utterance.pcm), [wanted])
                if piece is not None:
                    dealer.used.add(utterance.id)
                    backchannels.append(piece)
                    break
            if len(backchannels) >= mix["backchannel"]:
                break
        for _ in range(12):
            if len(backchannels) >= mix["backchannel"]:
                break
            utterance = next(iter(dealer.candidates(lambda u: 2 <= _word_count(u) <= 12)), None)
            if utterance is None:
                break
            dealer.used.add(utterance.id)
            piece = backchannel_piece(utterance, words(utterance.id, utterance.pcm), None)
            if piece is not None:
                backchannels.append(piece)
        if not backchannels:
            logger.warning("conversation_eval: no word short enough for a backchannel; no backchannel cases")

    # Lists first: they need the longest utterances, the fewest; best those with a comma inside (items).
    tried(lambda u: _word_count(u) >= 6 and _inner_punctuation(u) >= 1, list_case, mix["list"], "list", 8, False)
    tried(lambda u: _word_count(u) >= 6, list_case, mix["list"], "list", tries=8)
    tried(lambda u: _word_count(u) >= 5, split_case, mix["split"], "split", tries=8)
    for number in range(mix["finished"]):
        utterance = dealer.take(lambda u: _word_count(u) >= 1)
        if utterance is None:
            break
        cases["finished"].append(Case(f"finished-{number:02d}", "finished", [whole(utterance, "answer")]))
    for number in range(mix["backchannel"] if backchannels else 0):
        word = backchannels[number % len(backchannels)]
        # The backchannel's own speaker says the utterance before it, where they have one left.
        utterance = dealer.take(lambda u: _word_count(u) >= 2, speaker=word.speaker) or dealer.take(
            lambda u: _word_count(u) >= 2
        )
        if utterance is None:
            break
        after = round(rng.uniform(*BACKCHANNEL_AFTER_SECS), 3)
        pieces = [
            whole(utterance, "speak_over"),
            Piece(word.pcm, word.text, word.speaker, word.source, "ignore", after),
        ]
        cases["backchannel"].append(
            Case(f"backchannel-{number:02d}", "backchannel", pieces, tail_s=BACKCHANNEL_TAIL_SECS)
        )
    for number in range(mix["barge_in"]):
        first = dealer.take(lambda u: _word_count(u) >= 2)
        if first is None:
            break
        # The same speaker talks over the bot, as a caller would; another speaker if they have nothing left.
        second = dealer.take(lambda u: _word_count(u) >= 3, speaker=first.speaker)
        second = second if second is not None and second.id != first.id else dealer.take(lambda u: _word_count(u) >= 3)
        if second is None:
            break
        after = round(rng.uniform(*BARGE_AFTER_SECS), 3)
        pieces = [whole(first, "speak_over"), whole(second, "answer", after)]
        cases["barge_in"].append(Case(f"barge_in-{number:02d}", "barge_in", pieces))
    return stratified([case for kind in KINDS for case in cases[kind]])


def stratified(cases: Sequence[Case]) -> list[Case]:
    """Each kind spread evenly over the order, so the first N cases hold every kind in proportion
    (the first five: one of each kind)."""
    counts: dict[str, int] = defaultdict(int)
    keyed = []
    for case in cases:
        keyed.append((case, counts[case.kind]))
        counts[case.kind] += 1
    return [
        case for case, k in sorted(keyed, key=lambda c: (c[1] / counts[c[0].kind], _ORDER_PRIORITY.get(c[0].kind, 9)))
    ]


def sessions(cases: Sequence[Case], per_session: int = 8) -> list[list[Case]]:
    """Cases in groups of ``per_session``, each group one recording (one fresh pipeline)."""
    return [list(cases[i : i + per_session]) for i in range(0, len(cases), per_session)]


def session_audio(cases: Sequence[Case], gap: float = 7.0, *, lead_secs: float = 0.5) -> tuple[np.ndarray, list[Part]]:
    """The cases laid end to end at 16 kHz, and where each part's speech lies.

    The first clip starts after ``lead_secs`` of silence; within a case each piece's speech starts
    ``after_s`` after the previous piece's speech ends; ``gap`` seconds of silence (plus the case's
    ``tail_s``) follow each case's last speech (the next case starts there).
    """
    clips: list[tuple[int, np.ndarray]] = []
    parts: list[Part] = []
    speech_end: float | None = None
    tail = 0.0
    for case in cases:
        for index, piece in enumerate(case.pieces):
            start, end = voiced_bounds(piece.pcm)
            if speech_end is None:
                offset = lead_secs
            else:
                offset = speech_end + (piece.after_s if index else gap + tail) - start
            offset_samples = max(0, int(round(offset * RATE)))
            offset = offset_samples / RATE
            clips.append((offset_samples, piece.pcm))
            pause = None if index == 0 or speech_end is None else round(offset + start - speech_end, 3)
            parts.append(Part(f"{case.id}.{index}", case.id, case.kind, index, piece.text, piece.speaker, piece.source,
                              piece.expect, round(offset + start, 3), round(offset + end, 3), pause))  # fmt: skip
            speech_end = offset + end
        tail = case.tail_s
    total = int(round(((speech_end or 0.0) + gap + tail) * RATE))
    track = np.zeros(max([total] + [o + len(p) for o, p in clips]), dtype=np.int32)
    for offset, pcm in clips:
        track[offset : offset + len(pcm)] += pcm
    return np.clip(track, -32768, 32767).astype(np.int16), parts


# --- what the user hears --------------------------------------------------------------------------------


def heard_segments(pcm: np.ndarray, rate: int) -> list[tuple[float, float]]:
    """Bot speech in an output track: (start, end) seconds of 20 ms frames with RMS > ``LOUD_RMS``,
    joined across quieter gaps shorter than ``JOIN_SECS``."""
    step = int(rate * FRAME_SECS)
    if len(pcm) < step:
        return []
    frames = pcm[: len(pcm) // step * step].reshape(-1, step).astype(np.float64)
    loud = np.sqrt((frames**2).mean(axis=1)) > LOUD_RMS
    segments: list[list[float]] = []
    for index in np.flatnonzero(loud):
        start, end = int(index) * FRAME_SECS, (int(index) + 1) * FRAME_SECS
        if segments and start - segments[-1][1] < JOIN_SECS - 1e-9:
            segments[-1][1] = end
        else:
            segments.append([start, end])
    return [(round(float(s), 3), round(float(e), 3)) for s, e in segments]


def _sounding(segments: Sequence[tuple[float, float]], lo: float, hi: float) -> bool:
    return any(s < hi and e > lo for s, e in segments)


def _starts(segments: Sequence[tuple[float, float]], lo: float, hi: float) -> list[tuple[float, float]]:
    return [(s, e) for s, e in segments if lo <= s < hi]


def audible_stop(
    segments: Sequence[tuple[float, float]], onset: float, quiet: float = BARGE_QUIET_SECS
) -> float | None:
    """When the bot's audio sounding at ``onset`` (or ending within 0.2 s before it) ends: the end of its
    last frame before ``quiet`` seconds of silence. None if the bot was not sounding then."""
    current = next(((s, e) for s, e in segments if s < onset and e > onset - 0.2), None)
    if current is None:
        return None
    end = current[1]
    for s, e in segments:
        if s >= current[0] and s < end + quiet:
            end = max(end, e)
    return end


def _turn_span(turn: Turn) -> tuple[float, float] | None:
    if turn.user_started_s is None:
        return None
    stop = turn.user_stopped_s if turn.user_stopped_s is not None else turn.user_started_s + 30.0
    return turn.user_started_s, max(stop, turn.user_started_s)


def _overlapping(turns: Sequence[Turn], lo: float, hi: float) -> list[Turn]:
    found = []
    for turn in turns:
        span = _turn_span(turn)
        if span is not None and span[0] < hi and span[1] > lo:
            found.append(turn)
    return found


def percentiles(values: Sequence[float], *keys: str) -> dict[str, float | None]:
    """p50 (median), p90 (nearest rank, as :func:`vivavoce.turns.summarize`) and max."""
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for key in keys:
        if not ordered:
            out[key] = None
        elif key == "p50":
            out[key] = round(statistics.median(ordered), 1)
        elif key == "p90":
            out[key] = round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1)
        elif key == "max":
            out[key] = round(ordered[-1], 1)
    return out


def score_session(
    parts: Sequence[Part], turns: Sequence[Turn], output_pcm: np.ndarray, rate: int
) -> list[dict[str, Any]]:
    """One record per case of a session: what the user heard, scored (see the module docstring and
    ``bench/README.md`` for each figure's definition)."""
    segments = heard_segments(output_pcm, rate)
    track_end = len(output_pcm) / rate
    ordered = sorted(parts, key=lambda p: p.start_s)
    next_start = {p.id: (ordered[i + 1].start_s if i + 1 < len(ordered) else track_end) for i, p in enumerate(ordered)}
    by_case: dict[str, list[Part]] = defaultdict(list)
    for part in ordered:
        by_case[part.case_id].append(part)
    case_ids = list(dict.fromkeys(p.case_id for p in ordered))
    case_start = {cid: by_case[cid][0].start_s for cid in case_ids}

    # Replies: bot audio between the end of one user part and the start of the next.
    replies: dict[str, dict[str, Any]] = {}
    for part in ordered:
        lo, hi = part.end_s, next_start[part.id]
        clipped = [(max(s, lo), min(e, hi)) for s, e in segments if s < hi - FRAME_SECS and e > lo + FRAME_SECS]
        if not clipped:
            continue
        first = clipped[0][0]
        gaps = [(clipped[k][1], clipped[k + 1][0]) for k in range(len(clipped) - 1)]
        stalls = [b - a for a, b in gaps if a < first + STALL_WITHIN_SECS and b - a >= STALL_SECS - 1e-9]
        replies[part.id] = {
            "after_part": part.id,
            "first_audio_s": round(first, 3),
            "audio_s": round(sum(e - s for s, e in clipped), 2),
            "longest_gap_ms": round(max((b - a for a, b in gaps), default=0.0) * 1000),
            "stall": bool(stalls),
            "longest_stall_ms": round(max(stalls, default=0.0) * 1000),
        }

    # Report turns, checked against the WAV and given to the case they began in.
    starts_s = sorted(t.bot_started_s for t in turns if t.bot_started_s is not None)
    turn_rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for turn in turns:
        row: dict[str, Any] = {
            "user_text": turn.user_text.strip(),
            "bot_text": turn.bot_text.strip(),
            "user_started_s": None if turn.user_started_s is None else round(turn.user_started_s, 3),
            "user_stopped_s": None if turn.user_stopped_s is None else round(turn.user_stopped_s, 3),
            "bot_started_s": None if turn.bot_started_s is None else round(turn.bot_started_s, 3),
            "voice_to_voice_ms": turn.voice_to_voice_ms,
            "interrupted": turn.interrupted,
        }
        if turn.bot_started_s is not None:
            b = turn.bot_started_s
            later = [start for start in starts_s if start > b]
            # The heard audio of a reply may begin a frame or two before the report's start: 0.1 s of slack
            # at both ends, so the next reply's first frame is not taken for this one's.
            until = min(later, default=track_end + 0.1) - 0.1
            reply = [(s, e) for s, e in segments if b - 0.1 <= s < until]
            if reply:
                row["heard_started_s"] = reply[0][0]
                row["agreement_ms"] = round(abs(reply[0][0] - b) * 1000, 1)
                reply_start, reply_end = reply[0][0], max(e for _, e in reply)
                # Cut by the user: the user talked while the reply sounded, and it never went on past shortly
                # after that speech (a reply that paused for a backchannel and resumed was not cut); a reply
                # that ended within REACTION_SECS of the user's first sound ended by itself, as nothing can
                # stop audio before the VAD has heard the speech.
                cut = any(
                    p.start_s + REACTION_SECS <= reply_end <= p.end_s + 0.5 and p.end_s > reply_start for p in ordered
                )
                row["heard_stopped_s"] = reply_end
                row["heard_cut"] = cut
                row["mismatch"] = cut != turn.interrupted
            else:
                row["agreement_ms"] = None
                row["heard_cut"] = None
                row["mismatch"] = False  # nothing heard to compare with
        anchor = turn.user_started_s if turn.user_started_s is not None else turn.bot_started_s
        owner = case_ids[0] if case_ids else ""
        for cid in case_ids:
            if anchor is not None and case_start[cid] <= anchor + OVERLAP_SECS:
                owner = cid
        turn_rows[owner].append(row)

    records = []
    for cid in case_ids:
        case_parts = by_case[cid]
        kind = case_parts[0].kind
        spoken = [p for p in case_parts if p.expect != "ignore"]
        record: dict[str, Any] = {
            "case": cid,
            "kind": kind,
            "speakers": list(dict.fromkeys(p.speaker for p in case_parts)),
            "sources": [p.source for p in case_parts],
            "parts": [{"id": p.id, "text": p.text, "expect": p.expect, "start_s": p.start_s, "end_s": p.end_s,
                       "pause_before_s": p.pause_before_s} for p in case_parts],  # fmt: skip
            "reference": " ".join(p.text for p in spoken),
        }
        lo, hi = spoken[0].start_s - OVERLAP_SECS, spoken[-1].end_s + OVERLAP_SECS
        heard_turns = _overlapping(turns, lo, hi)
        record["heard"] = " ".join(t.user_text.strip() for t in heard_turns).strip()
        errors, words = word_errors(record["reference"], record["heard"])
        record["wer"] = {"errors": errors, "words": words}
        flags: list[str] = []

        # End of turn: the end of the part the bot should answer -> first bot audio after it.
        answer = next((p for p in reversed(case_parts) if p.expect == "answer"), None)
        if answer is not None:
            window = next_start[answer.id]
            starts = _starts(segments, answer.end_s, window)
            talked_over = _sounding(segments, answer.end_s - 0.001, answer.end_s + 0.001)
            if talked_over:
                delay: float | None = 0.0
                flags.append("talked_over_end")
            else:
                delay = round(starts[0][0] - answer.end_s, 3) if starts else None
            record["delay_s"] = delay
            record["answered"] = delay is not None
            record["dead_air"] = delay is not None and delay > DEAD_AIR_SECS
            if delay is None:
                flags.append("unanswered")
            elif record["dead_air"]:
                flags.append("dead_air")

        # Cut-ins: bot audio that starts in a mid-utterance pause, or after the user resumed but before that
        # part ends (an answer to the unfinished utterance the pipeline did not hold back in time).
        pauses = []
        for before, after in zip(case_parts, case_parts[1:], strict=False):
            if before.expect != "wait":
                continue
            starts = _starts(segments, before.end_s, after.end_s)
            pauses.append({"after_part": before.id, "pause_s": after.pause_before_s, "cut_in": bool(starts),
                           "cut_in_at_s": starts[0][0] if starts else None,
                           "in_silence": bool(starts) and starts[0][0] < after.start_s})  # fmt: skip
            if starts:
                flags.append("cut_in")
        record["pauses"] = pauses

        # Lost speech: a part no report turn heard (none overlapping it, or none of its words in theirs: the
        # latter "misheard", where a turn took the audio but the STT wrote other words)...
        lost, misheard = [], []
        for part in spoken:
            near = _overlapping(turns, part.start_s - OVERLAP_SECS, part.end_s + OVERLAP_SECS)
            heard_words = set(scored_words(" ".join(t.user_text for t in near)))
            if not near or not heard_words.intersection(scored_words(part.text)):
                lost.append(part.id)
                if near:
                    misheard.append(part.id)
        record["lost_parts"] = lost
        record["misheard_parts"] = misheard
        # ... or a case that should be answered with no bot audio after it (a backchannel case: after its
        # utterance, the answer the backchannel is said over).
        final = answer if answer is not None else spoken[-1]
        case_end = next_start[case_parts[-1].id]
        record["lost_answer"] = not _sounding(segments, final.end_s, case_end)
        if lost or record["lost_answer"]:
            flags.append("lost_speech")

        if kind == "backchannel":
            word = next(p for p in case_parts if p.expect == "ignore")
            # Valid: the answer had begun (0.2 s or more before the word) and was playing as the word began.
            begun = _starts(segments, spoken[-1].end_s, word.start_s - 0.2)
            valid = bool(begun) and _sounding(segments, word.start_s - 0.2, word.start_s)
            went_on = _sounding(segments, word.end_s, word.end_s + BACKCHANNEL_RESUME_SECS)
            answered_it = [
                t for t in _overlapping(turns, word.start_s - OVERLAP_SECS, word.end_s + OVERLAP_SECS)
                if t.bot_started_s is not None and t.bot_started_s >= word.start_s
            ]  # fmt: skip
            ok = valid and went_on and not answered_it
            record["backchannel"] = {"word": word.text, "valid": valid, "went_on": went_on,
                                     "answered_as_turn": bool(answered_it), "ok": ok}  # fmt: skip
            if valid and not ok:
                flags.append("backchannel_not_ok")
            elif not valid:
                flags.append("backchannel_invalid")
        if kind == "barge_in":
            barge = case_parts[1]
            stop = audible_stop(segments, barge.start_s)
            record["barge_in"] = {
                "valid": stop is not None,
                "audible_stop_ms": None if stop is None else round(max(0.0, stop - barge.start_s) * 1000),
                "stopped_before_user_ended": None if stop is None else stop <= barge.end_s,
            }
            if stop is None:
                flags.append("barge_in_invalid")
            elif stop > barge.end_s:
                flags.append("barge_not_stopped")

        # Talk-over: bot audio that starts, after >= 0.3 s of silence, while the user is speaking (answering at
        # a pause inside their speech, or resuming over them). Backchannels are left out: the bot is meant to
        # go on over those.
        record["talk_over"] = [
            {"part": p.id, "at_s": s}
            for p in spoken
            for k, (s, _) in enumerate(segments)
            if p.start_s + 0.05 <= s < p.end_s and (k == 0 or s - segments[k - 1][1] >= BARGE_QUIET_SECS)
        ]
        if record["talk_over"]:
            flags.append("talk_over")
        # The reply was still playing when the next case began: the gap was too short for it.
        following = next((q for q in ordered if q.start_s > case_parts[-1].start_s and q.case_id != cid), None)
        record["overran_gap"] = following is not None and _sounding(
            segments, following.start_s - 0.1, following.start_s
        )
        if record["overran_gap"]:
            flags.append("overran_gap")

        record["replies"] = [replies[p.id] for p in case_parts if p.id in replies]
        if any(r["stall"] for r in record["replies"]):
            flags.append("stall")
        record["turns"] = turn_rows.get(cid, [])
        if any(t.get("mismatch") for t in record["turns"]):
            flags.append("report_mismatch")
        record["flags"] = flags
        records.append(record)
    return records


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The figures over every scored case record of one variant."""
    scored = [r for r in records if "delay_s" in r]
    delays = [r["delay_s"] * 1000 for r in scored if r["delay_s"] is not None]
    finished = [r["delay_s"] * 1000 for r in scored if r["delay_s"] is not None and r["kind"] == "finished"]
    pauses = [p for r in records for p in r["pauses"]]
    short = [p for p in pauses if p["pause_s"] is not None and p["pause_s"] <= 1.0]
    replies = [x for r in records for x in r["replies"]]
    stalls = [x for x in replies if x["stall"]]
    turns = [t for r in records for t in r["turns"]]
    lost_parts = [pid for r in records for pid in r["lost_parts"]]
    misheard = [pid for r in records for pid in r["misheard_parts"]]
    lost_cases = [r["case"] for r in records if r["lost_answer"]]
    errors = sum(r["wer"]["errors"] for r in records)
    words = sum(r["wer"]["words"] for r in records)
    backchannels = [r["backchannel"] | {"case": r["case"]} for r in records if "backchannel" in r]
    valid_bc = [b for b in backchannels if b["valid"]]
    barges = [r["barge_in"] | {"case": r["case"]} for r in records if "barge_in" in r]
    stops = [b["audible_stop_ms"] for b in barges if b["audible_stop_ms"] is not None]
    agreement = [t["agreement_ms"] for t in turns if t.get("agreement_ms") is not None]
    mismatches = [t for t in turns if t.get("mismatch")]

    def rate(n: int, d: int) -> float | None:
        return round(n / d, 3) if d else None

    return {
        "cases": len(records),
        "answer_points": len(scored),
        "end_of_turn_ms": {"n": len(delays), **percentiles(delays, "p50", "p90", "max")},
        # The targets are on finished sentences: the same figures over those cases alone.
        "finished_end_of_turn_ms": {"n": len(finished), **percentiles(finished, "p50", "p90", "max")},
        "finished_dead_air": sum(bool(r["dead_air"]) for r in scored if r["kind"] == "finished"),
        "dead_air": sum(bool(r["dead_air"]) for r in scored),
        "unanswered": sum(not r["answered"] for r in scored),
        "dead_air_cases": [r["case"] for r in scored if r["dead_air"]],
        "unanswered_cases": [r["case"] for r in scored if not r["answered"]],
        "cut_ins": {
            "count": sum(p["cut_in"] for p in pauses),
            "in_silence": sum(p["in_silence"] for p in pauses),
            "pauses": len(pauses),
            "rate": rate(sum(p["cut_in"] for p in pauses), len(pauses)),
            "pauses_le_1s": len(short),
            "rate_le_1s": rate(sum(p["cut_in"] for p in short), len(short)),
            "cases": sorted({p["after_part"].rsplit(".", 1)[0] for p in pauses if p["cut_in"]}),
        },
        "talk_over": {
            "count": sum(len(r["talk_over"]) for r in records),
            "cases": [r["case"] for r in records if r["talk_over"]],
        },
        "overran_gap": [r["case"] for r in records if r["overran_gap"]],
        "stalls": {
            "count": len(stalls),
            "replies": len(replies),
            "longest_ms": max((x["longest_stall_ms"] for x in stalls), default=0),
            "after_parts": [x["after_part"] for x in stalls],
        },
        "lost_speech": {"parts": len(lost_parts), "part_ids": lost_parts, "misheard": len(misheard),
                        "misheard_ids": misheard, "unanswered_cases": len(lost_cases),
                        "case_ids": lost_cases},  # fmt: skip
        "wer": {"wer": rate(errors, words), "errors": errors, "words": words},
        "voice_to_voice_reported_ms": {
            "n": len(v := [t["voice_to_voice_ms"] for t in turns if t["voice_to_voice_ms"] is not None]),
            **percentiles(v, "p50", "p90"),
        },
        "backchannel": {
            "cases": len(backchannels),
            "valid": len(valid_bc),
            "ok": sum(b["ok"] for b in valid_bc),
            "ok_rate": rate(sum(b["ok"] for b in valid_bc), len(valid_bc)),
            "answered_as_turn": sum(b["answered_as_turn"] for b in valid_bc),
            "not_ok": [b["case"] for b in valid_bc if not b["ok"]],
            "invalid": [b["case"] for b in backchannels if not b["valid"]],
        },
        "barge_in": {
            "cases": len(barges),
            "valid": len(stops),
            "audible_stop_ms": percentiles(stops, "p50", "max"),
            "not_stopped": [b["case"] for b in barges if b["stopped_before_user_ended"] is False],
            "invalid": [b["case"] for b in barges if not b["valid"]],
        },
        "report_agreement": {
            "turns": len(agreement),
            "bot_started_ms": percentiles(agreement, "p50", "max"),
            "report_mismatches": len(mismatches),
            "mismatch_turns": [
                {k: t[k] for k in ("user_text", "bot_started_s", "interrupted", "heard_cut")} for t in mismatches
            ],
        },
    }


RATIO_FIGURES: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "end_of_turn_p50": lambda f: f["end_of_turn_ms"]["p50"],
    "end_of_turn_p90": lambda f: f["end_of_turn_ms"]["p90"],
    "end_of_turn_max": lambda f: f["end_of_turn_ms"]["max"],
    "finished_end_of_turn_p90": lambda f: f["finished_end_of_turn_ms"]["p90"],
    "dead_air": lambda f: f["dead_air"],
    "unanswered": lambda f: f["unanswered"],
    "cut_in_rate": lambda f: f["cut_ins"]["rate"],
    "stalls": lambda f: f["stalls"]["count"],
    "lost_speech_parts": lambda f: f["lost_speech"]["parts"],
    "wer": lambda f: f["wer"]["wer"],
    "barge_in_audible_stop_p50": lambda f: f["barge_in"]["audible_stop_ms"]["p50"],
    "backchannel_ok_rate": lambda f: f["backchannel"]["ok_rate"],
}
"""Figures compared with vivavoce's as variant / vivavoce (lower is better except backchannel_ok_rate)."""


def ratios(figures: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    """variant / base per :data:`RATIO_FIGURES` (1.0 when both are 0; None when only the base is 0 or missing)."""
    out: dict[str, float | None] = {}
    for name, get in RATIO_FIGURES.items():
        value, reference = get(figures), get(base)
        if value is None or reference is None:
            out[name] = None
        elif reference == 0:
            out[name] = 1.0 if value == 0 else None
        else:
            out[name] = round(value / reference, 2)
    return out


async def phone_audio(pcm_16k: np.ndarray) -> np.ndarray:
    """16 kHz speech as a phone call delivers it: through 8 kHz mu-law (:func:`through_phone_line`), then
    at 8 kHz, so a run on it uses the narrowband VAD. Same timeline (seconds) as the input."""
    import soxr

    from vivavoce.testing.phone_line import through_phone_line

    line = await through_phone_line(pcm_16k)
    narrow = soxr.resample(line.astype(np.float32), 16000, 8000)
    return np.clip(np.round(narrow), -32768, 32767).astype(np.int16)


def case_counts(cases: Iterable[Case]) -> dict[str, int]:
    """How many cases of each kind."""
    counts = {kind: 0 for kind in KINDS}
    for case in cases:
        counts[case.kind] = counts.get(case.kind, 0) + 1
    return counts


__all__ = [
    "Case", "Part", "Piece", "Word", "build_cases", "stratified", "sessions", "session_audio", "heard_segments",
    "audible_stop", "score_session", "summarise", "ratios", "phone_audio", "word_errors", "normalise_words",
    "scored_words", "number_words", "percentiles", "edit_distance", "corpus_wer", "whisper_words", "backchannel_piece",
    "case_counts", "split_after_words", "stt_segment_after_pause", "word_alone", "DEFAULT_MIX", "KINDS",
]  # fmt: skip
