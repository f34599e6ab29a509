"""The simulated phone line gives the same audio for the same input, however busy the machine."""

import asyncio
import itertools
from unittest import mock

import numpy as np
import pipecat.audio.resamplers.soxr_stream_resampler as soxr_stream_resampler

from vivavoce.testing.phone_line import through_phone_line


def tone() -> np.ndarray:
    t = np.arange(16000) / 16000
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)


def test_the_same_input_gives_the_same_line() -> None:
    first, second = (asyncio.run(through_phone_line(tone())) for _ in range(2))
    np.testing.assert_array_equal(first, second)


def test_the_line_does_not_depend_on_the_wall_clock() -> None:
    at_full_speed = asyncio.run(through_phone_line(tone()))
    # A clock that moves a second between frames: every frame comes after the resampler's 0.2 s reset threshold.
    seconds = itertools.count()
    with mock.patch.object(soxr_stream_resampler.time, "time", lambda: float(next(seconds))):
        on_a_busy_machine = asyncio.run(through_phone_line(tone()))
    np.testing.assert_array_equal(on_a_busy_machine, at_full_speed)


def test_the_line_keeps_the_timeline_and_the_band() -> None:
    line = asyncio.run(through_phone_line(tone()))
    assert abs(len(line) - 16000) <= 320  # at most one 20 ms frame held in the resampler
    # The tone comes through in place and at its level (mu-law and two resamplings cost well under 1 dB).
    middle = slice(4000, 12000)
    level = np.sqrt(np.mean(line[middle].astype(float) ** 2)) / np.sqrt(np.mean(tone()[middle].astype(float) ** 2))
    assert 0.9 < level < 1.1
    assert np.corrcoef(line[middle], tone()[middle])[0, 1] > 0.99
