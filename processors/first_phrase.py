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
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pipecat.utils.text.base_text_aggregator import Aggregation, TextType
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator

CLAUSE_BREAKS = ",;:"


GROWTH_ENDS_AT = 8
"""Pieces grow while the next may have at most this many times ``max_words`` words (24 by default); then
whole sentences."""


class FirstPhraseTextAggregator(SimpleTextAggregator):
    """Sentences, except that each reply's first pieces go to TTS as soon as they are phrases."""

    def __init__(self, *, max_words: int = 4, min_words: int = 2, **kwargs):
        """Release the opening phrase at a clause break after ``min_words``, or after ``max_words`` words;
        the next pieces after twice as many words as the piece before each (see the module docstring)."""
        super().__init__(**kwargs)
        self._max_words = max_words
        self._min_words = min_words
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
            if result is None and self._limit is not None and self._phrase_ready(char, self._limit):
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

    def _phrase_ready(self, char: str, limit: int) -> bool:
        words = len(self._text.split())
        if char in CLAUSE_BREAKS:
            return words >= self._min_words
        # At a space, so a word is never cut; the sentence check above wins when punctuation is there.
        return char.isspace() and words >= limit and self._text.strip()[-1:].isalnum()

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
