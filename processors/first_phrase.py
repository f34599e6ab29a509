"""Text aggregation for TTS that speaks the first words of a reply before the first sentence is complete.

pipecat's ``SimpleTextAggregator`` waits for a whole sentence (and one character of lookahead) before
synthesis starts. A small local LLM writes a long first sentence slowly enough for the wait to be heard as
silence. This aggregator releases the opening phrase of each reply at its first clause break
(``,;:``) or after ``max_words`` words.

The rest of the sentence must then be ready before the opening phrase has been heard, or the reply stalls
after its first words: waiting for the whole rest of a long sentence (the LLM writing it, then the TTS
synthesising all its audio at once) stalled replies on real speech for most of a second
(bench/conversation.py counts such stalls; figures in bench/README.md). So the pieces after the first
grow geometrically: each is released at a clause break, or once it has twice the previous limit's words
(3, 6, 12, 24), each piece's audio lasting about as long as the next takes to write and synthesise; after
four pieces the reply goes on sentence by sentence, as pipecat does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pipecat.utils.text.base_text_aggregator import Aggregation, TextType
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator

CLAUSE_BREAKS = ",;:"


GROWING_PIECES = 4
"""Pieces of a reply released early (3, 6, 12, 24 words at most); then whole sentences."""


class FirstPhraseTextAggregator(SimpleTextAggregator):
    """Sentences, except that each reply's first pieces go to TTS as soon as they are phrases."""

    def __init__(self, *, max_words: int = 4, min_words: int = 2, **kwargs):
        """Release the opening phrase at a clause break after ``min_words``, or after ``max_words`` words;
        the next pieces after twice as many words each (see the module docstring)."""
        super().__init__(**kwargs)
        self._max_words = max_words
        self._min_words = min_words
        self._pieces = 0  # released so far in this reply

    async def aggregate(self, text: str) -> AsyncIterator[Aggregation]:
        """Yield the opening phrase early, then whole sentences."""
        if self._aggregation_type == TextType.TOKEN:
            async for aggregation in super().aggregate(text):
                yield aggregation
            return
        for char in text:
            self._text += char
            result = await self._check_sentence_with_lookahead(char)
            if result is None and self._pieces < GROWING_PIECES and self._phrase_ready(char):
                result = Aggregation(text=self._text.strip(), type=TextType.SENTENCE)
                await super().reset()
            if result is not None:
                self._pieces += 1
                yield result

    def _phrase_ready(self, char: str) -> bool:
        words = len(self._text.split())
        if char in CLAUSE_BREAKS:
            return words >= self._min_words
        # At a space, so a word is never cut; the sentence check above wins when punctuation is there.
        limit = self._max_words * 2**self._pieces
        return char.isspace() and words >= limit and self._text.strip()[-1:].isalnum()

    async def flush(self) -> Aggregation | None:
        """End of a reply: the next reply starts with an opening phrase again."""
        self._pieces = 0
        return await super().flush()

    async def handle_interruption(self) -> None:
        """An interrupted reply: the next one starts with an opening phrase again."""
        self._pieces = 0
        await super().handle_interruption()

    async def reset(self) -> None:
        """Clear the buffer (the first-phrase state is kept: reset happens mid-reply too)."""
        await super().reset()
