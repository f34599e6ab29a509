"""Text aggregation for TTS that speaks the first words of a reply before the first sentence is complete.

pipecat's ``SimpleTextAggregator`` waits for a whole sentence (and one character of lookahead) before
synthesis starts. A small local LLM writes a long first sentence slowly enough for the wait to be heard as
silence. This aggregator releases the opening phrase of each reply at its first clause break
(``,;:``) or after ``max_words`` words.

The rest of the sentence must then be ready before the opening phrase has been heard, or the reply stalls
after its first words: waiting for the whole rest of a long sentence (the LLM writing it, then the TTS
synthesising all its audio at once) stalled replies on real speech for most of a second
(bench/conversation.py counts such stalls; figures in bench/README.md). So the pieces after the first
grow geometrically: each is released at a clause break, a sentence's end, or once it has twice the words
of the piece before (at least ``max_words``: 3, 6, 12, 24), each piece's audio lasting about as long as
the next takes to write and synthesise. Twice the words *said*, not twice the last limit: a sentence that
ended a word into its piece ("No worries at | all. | I'll just have to think of something else...") left
half a second of audio to cover a 12-word piece, and stalled. Once the next piece would be longer than
``8 * max_words`` words, the reply goes on sentence by sentence, as pipecat does.

Growth assumes the LLM writes twice the words in the time the listener hears the piece before; on a slow
or loaded CPU it does not (a 12-word piece took 1.7 s to write while 2.6 s of audio played out, and the
reply stalled for a second: bench/conversation.py). So the words written so far also go out, at a word
boundary, once the audio queued ahead of the listener (:class:`Playout`) is about to run out.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseStartFrame,
    TTSAudioRawFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.utils.text.base_text_aggregator import Aggregation, TextType
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator

CLAUSE_BREAKS = ",;:"


GROWTH_ENDS_AT = 8
"""Pieces grow while the next may have at most this many times ``max_words`` words (24 by default); then
whole sentences."""

LOW_WATER_SECS = 0.6
"""Audio queued ahead of the listener below which the words written so far go to TTS: Piper took 0.2-0.55 s
to synthesise a 3-13 word piece on the loaded 2-core machine."""


class Playout:
    """How much of a reply's audio is still queued ahead of the listener.

    The TTS counts the audio it produces; playback is taken to start at the reply's first
    ``BotStartedSpeakingFrame`` (an early answer is held until the end of the turn is decided) and to run in
    real time from then on. Unknown (None) before it starts.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._queued = 0.0  # produced before playback started
        self._ends_at: float | None = None

    def reset(self) -> None:
        """A new reply, or an interrupted one: nothing queued."""
        self._queued, self._ends_at = 0.0, None

    def produced(self, seconds: float) -> None:
        """The TTS produced ``seconds`` more audio of the reply."""
        if self._ends_at is None:
            self._queued += seconds
        else:
            self._ends_at = max(self._ends_at, self._clock()) + seconds

    def started(self) -> None:
        """The listener began to hear the reply (later starts, after a gap, change nothing)."""
        if self._ends_at is None:
            self._ends_at = self._clock() + self._queued

    def ahead(self) -> float | None:
        """Seconds of audio the listener has still to hear; None before playback started."""
        return None if self._ends_at is None else max(0.0, self._ends_at - self._clock())


class FirstPhraseTextAggregator(SimpleTextAggregator):
    """Sentences, except that each reply's first pieces go to TTS as soon as they are phrases."""

    def __init__(
        self,
        *,
        max_words: int = 4,
        min_words: int = 2,
        audio_ahead: Callable[[], float | None] | None = None,
        **kwargs: Any,
    ):
        """Release the opening phrase at a clause break after ``min_words``, or after ``max_words`` words;
        the next pieces after twice as many words as the piece before each, or (``audio_ahead``: seconds
        of audio queued ahead of the listener, e.g. :meth:`Playout.ahead`) once that runs low (see the
        module docstring)."""
        super().__init__(**kwargs)
        self._max_words = max_words
        self._min_words = min_words
        self._audio_ahead = audio_ahead
        self._limit: int | None = max_words  # words of the next piece at most; None: whole sentences

    async def aggregate(self, text: str) -> AsyncIterator[Aggregation]:
        """Yield the opening phrase early, then growing pieces, then whole sentences."""
        if self._aggregation_type == TextType.TOKEN:
            async for aggregation in super().aggregate(text):
                yield aggregation
            return
        for char in text:
            self._text += char
            result = await self._check_sentence_with_lookahead(char)
            if result is None and (
                (self._limit is not None and self._phrase_ready(char, self._limit)) or self._running_dry(char)
            ):
                result = Aggregation(text=self._text.strip(), type=TextType.SENTENCE)
                await super().reset()
            if result is not None:
                self._grow(len(result.text.split()))
                yield result

    def _grow(self, words: int) -> None:
        if self._limit is None:
            return
        grown = 2 * max(words, self._max_words)
        self._limit = grown if grown <= GROWTH_ENDS_AT * self._max_words else None

    def _at_word_end(self, char: str) -> bool:
        """At a space after a word, so a word is never cut (after punctuation the sentence check decides)."""
        return char.isspace() and self._text.strip()[-1:].isalnum()

    def _running_dry(self, char: str) -> bool:
        """At a word's end, with a few words written: is the audio ahead of the listener about to run out?"""
        if self._audio_ahead is None or not self._at_word_end(char):
            return False
        if len(self._text.split()) < self._min_words:
            return False
        ahead = self._audio_ahead()
        if ahead is None or ahead >= LOW_WATER_SECS:
            return False
        logger.debug(
            f"{type(self).__name__}: {ahead:.2f}s of audio ahead of the listener: [{self._text.strip()}] goes now"
        )
        return True

    def _phrase_ready(self, char: str, limit: int) -> bool:
        words = len(self._text.split())
        if char in CLAUSE_BREAKS:
            return words >= self._min_words
        return words >= limit and self._at_word_end(char)

    async def flush(self) -> Aggregation | None:
        """End of a reply: the next reply starts with an opening phrase again."""
        self._limit = self._max_words
        return await super().flush()

    async def handle_interruption(self) -> None:
        """An interrupted reply: the next one starts with an opening phrase again."""
        self._limit = self._max_words
        await super().handle_interruption()

    async def reset(self) -> None:
        """Clear the buffer (the first-phrase state is kept: reset happens mid-reply too)."""
        await super().reset()


class FirstPhraseTTSMixin:
    """For a pipecat ``TTSService``: :class:`FirstPhraseTextAggregator`, fed with the reply's
    :class:`Playout` (the audio this service pushes, the bot's start, a new or interrupted reply).

    Put it before the ``TTSService`` base class and call :meth:`_speak_first_phrases` in ``__init__``.
    """

    _playout: Playout | None = None

    def _speak_first_phrases(self, max_words: int) -> None:
        """Aggregate each reply's text as first phrase, growing pieces, then sentences."""
        self._playout = Playout()
        self._text_aggregator = FirstPhraseTextAggregator(
            max_words=max_words,
            audio_ahead=self._playout.ahead,
            aggregation_type=self._text_aggregation_mode,
            language=self._text_aggregator.language,
        )

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        """Count the reply's audio as it goes out."""
        if self._playout is not None and isinstance(frame, TTSAudioRawFrame) and frame.sample_rate:
            self._playout.produced(len(frame.audio) / (2 * frame.num_channels * frame.sample_rate))
        await super().push_frame(frame, direction)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Follow the reply's playback: its start, and a new or interrupted reply."""
        if self._playout is not None:
            if isinstance(frame, BotStartedSpeakingFrame):
                self._playout.started()
            elif isinstance(frame, (LLMFullResponseStartFrame, InterruptionFrame)):
                self._playout.reset()
        await super().process_frame(frame, direction)
