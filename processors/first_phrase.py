"""Text aggregation for TTS that speaks the first words of a reply before the first sentence is complete.

pipecat's ``SimpleTextAggregator`` waits for a whole sentence (and one character of lookahead) before
synthesis starts. A small local LLM produces ~20 tokens/s, so a 15-word first sentence costs most of a
second of silence. This aggregator releases the opening phrase of each reply at its first clause break
(``,;:``) or after ``max_words`` words, then continues sentence by sentence as pipecat does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pipecat.utils.text.base_text_aggregator import Aggregation, TextType
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator

CLAUSE_BREAKS = ",;:"


class FirstPhraseTextAggregator(SimpleTextAggregator):
    """Sentences, except that each reply's first phrase goes to TTS as soon as it is a phrase."""

    def __init__(self, *, max_words: int = 4, min_words: int = 2, **kwargs):
        """Release the opening phrase at a clause break after ``min_words``, or after ``max_words`` words."""
        super().__init__(**kwargs)
        self._max_words = max_words
        self._min_words = min_words
        self._first = True

    async def aggregate(self, text: str) -> AsyncIterator[Aggregation]:
        """Yield the opening phrase early, then whole sentences."""
        if self._aggregation_type == TextType.TOKEN:
            async for aggregation in super().aggregate(text):
                yield aggregation
            return
        for char in text:
            self._text += char
            result = await self._check_sentence_with_lookahead(char)
            if result is None and self._first and self._opening_phrase_ready(char):
                result = Aggregation(text=self._text.strip(), type=TextType.SENTENCE)
                await super().reset()
            if result is not None:
                self._first = False
                yield result

    def _opening_phrase_ready(self, char: str) -> bool:
        words = len(self._text.split())
        if char in CLAUSE_BREAKS:
            return words >= self._min_words
        # At a space, so a word is never cut; the sentence check above wins when punctuation is there.
        return char.isspace() and words >= self._max_words and self._text.strip()[-1:].isalnum()

    async def flush(self) -> Aggregation | None:
        """End of a reply: the next reply starts with an opening phrase again."""
        self._first = True
        return await super().flush()

    async def handle_interruption(self) -> None:
        """An interrupted reply: the next one starts with an opening phrase again."""
        self._first = True
        await super().handle_interruption()

    async def reset(self) -> None:
        """Clear the buffer (the first-phrase state is kept: reset happens mid-reply too)."""
        await super().reset()
