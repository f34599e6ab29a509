"""The conversation bench's scoring rules (vivavoce.testing.conversation_eval) on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from vivavoce.testing.conversation_eval import (
    Part,
    normalise_words,
    number_words,
    score_session,
    scored_words,
    summarise,
    word_errors,
)
from vivavoce.turns import Turn


@pytest.mark.parametrize(
    ("number", "said"),
    [(0, "zero"), (6, "six"), (13, "thirteen"), (20, "twenty"), (21, "twenty one"), (100, "one hundred"),
     (105, "one hundred five"), (999, "nine hundred ninety nine")],
)  # fmt: skip
def test_numbers_are_spelled_as_said(number, said):
    assert number_words(number) == said.split()


def test_a_number_whisper_writes_in_digits_is_the_word_heard():
    # tiny.en writes "Six spoons of fresh snow peas," as "6 spoons of fresh snow peas": no error.
    assert word_errors("Six spoons of fresh snow peas,", "6 spoons of fresh snow peas.") == (0, 6)
    assert word_errors("twenty-one days", "21 days") == (0, 3)
    assert word_errors("Six spoons", "7 spoons") == (1, 2)  # a wrong number is still wrong
    assert scored_words("in 1999") == ["in", "1999"]  # years and large numbers are said many ways: left as written


def test_cases_still_align_on_the_digits_as_written():
    assert normalise_words("6 spoons") == ["6", "spoons"]


def _part(case: str, text: str, start: float, end: float) -> Part:
    return Part(id=f"{case}.0", case_id=case, kind="finished", index=0, text=text, speaker="s", source="test",
                expect="answer", start_s=start, end_s=end, pause_before_s=None)  # fmt: skip


def test_lost_speech_tells_a_part_no_turn_took_from_one_the_stt_misheard():
    rate = 16000
    output = np.zeros(30 * rate, dtype=np.int16)
    for start in (3.0, 13.0, 23.0):  # an answer after each part
        t = np.arange(int(1.5 * rate)) / rate
        output[int(start * rate) : int(start * rate) + len(t)] = (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
    parts = [_part("finished-00", "Six spoons of fresh snow peas,", 1.0, 2.5),
             _part("finished-01", "New Jersey now.", 11.0, 12.0),
             _part("finished-02", "Hello?", 21.0, 21.4)]  # fmt: skip
    turns = [
        Turn(user_text="6.", user_started_s=1.0, user_stopped_s=2.5, bot_started_s=3.0),
        Turn(user_text="Here is the map.", user_started_s=11.0, user_stopped_s=12.0, bot_started_s=13.0),
    ]

    records = score_session(parts, turns, output, rate)

    assert [r["lost_parts"] for r in records] == [[], ["finished-01.0"], ["finished-02.0"]]
    assert [r["misheard_parts"] for r in records] == [[], ["finished-01.0"], []]
    lost = summarise(records)["lost_speech"]
    assert (lost["parts"], lost["misheard"], lost["misheard_ids"]) == (2, 1, ["finished-01.0"])
