"""When a turn starts and ends, from Silero's speech probability per 32 ms window and Smart Turn's verdicts.

The same decision as the agent's user turn, without its words: the VAD hears speech for ``start_secs`` (the
turn starts), then silence for ``stop_secs`` (a pause); Smart Turn v3 judges the turn's audio at the pause;
"finished" ends the turn at once, "not finished" waits for more speech or, failing that, for
``max_silence_secs`` of silence (the fallback). Speech that resumes for ``start_secs`` within the pause
continues the same turn. Pure logic over sample positions on the 16 kHz timeline: the session feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from vivavoce_asr.vad import WINDOW


@dataclass(frozen=True)
class TurnParams:
    """End-of-turn settings (the agent's timing, except the fallback: it has no words to weigh)."""

    threshold: float = 0.5  # Silero's speech probability threshold (faster-whisper's default)
    start_secs: float = 0.064  # speech needed to start (or resume) a turn: two windows, as the agent's VAD
    # (0.2 s missed short words said alone, "No.", a quiet "Hello?": bench/vad_words.py, bench/README.md)
    stop_secs: float = 0.2  # silence that makes a pause, where Smart Turn is asked
    max_silence_secs: float = 1.0  # a pause this long ends the turn whatever Smart Turn said
    complete_probability: float = 0.5  # Smart Turn's verdict "finished" from this probability

    def windows(self, seconds: float) -> int:
        """``seconds`` in whole VAD windows (at least one), rounded as pipecat's VAD rounds them."""
        return max(1, round(seconds * 16000 / WINDOW))


class State(Enum):
    """Where the stream is."""

    IDLE = "idle"
    SPEAKING = "speaking"
    PAUSED = "paused"


@dataclass(frozen=True)
class SpeechStarted:
    """A turn began: ``onset`` is the first sample of its first speech window."""

    onset: int


@dataclass(frozen=True)
class Paused:
    """The speech stopped at ``speech_end`` (sample): ask Smart Turn; ``pause`` identifies this pause."""

    pause: int
    speech_end: int


@dataclass(frozen=True)
class Resumed:
    """Speech came back within pause ``pause``: its verdict and anything prepared for it are moot."""

    pause: int


@dataclass(frozen=True)
class TurnEnded:
    """The turn is over; its speech ended at ``speech_end``; ``pause`` is the pause that ended it."""

    onset: int
    speech_end: int
    pause: int
    reason: str  # "smart_turn", "silence" or "flush"


Event = SpeechStarted | Paused | Resumed | TurnEnded


class TurnDetector:
    """The turn state of one stream, window by window."""

    def __init__(self, params: TurnParams | None = None):
        """Start idle."""
        self.params = params or TurnParams()
        self._start = self.params.windows(self.params.start_secs)
        self._stop = self.params.windows(self.params.stop_secs)
        self._max_silence = round(self.params.max_silence_secs * 16000)
        self.state = State.IDLE
        self._run = 0  # consecutive speech windows while not speaking
        self._run_start = 0
        self._silence = 0  # consecutive silent windows while speaking
        self.onset = 0
        self.speech_end = 0
        self.pause = 0

    def window(self, index: int, probability: float) -> list[Event]:
        """Window ``index`` (samples ``index * 512`` on) had speech ``probability``: what happened."""
        speech = probability >= self.params.threshold
        end = (index + 1) * WINDOW
        if self.state is State.SPEAKING:
            if speech:
                self._silence = 0
                self.speech_end = end
                return []
            self._silence += 1
            if self._silence < self._stop:
                return []
            self.state = State.PAUSED
            self.pause += 1
            self._run = 0
            return [Paused(self.pause, self.speech_end)]
        if speech:
            if self._run == 0:
                self._run_start = index * WINDOW
            self._run += 1
            if self._run < self._start:
                return []
            self._run = 0
            self._silence = 0
            self.speech_end = end
            if self.state is State.PAUSED:
                self.state = State.SPEAKING
                return [Resumed(self.pause)]
            self.state = State.SPEAKING
            self.onset = self._run_start
            return [SpeechStarted(self.onset)]
        self._run = 0
        if self.state is State.PAUSED and end - self.speech_end >= self._max_silence:
            return [self._end("silence")]
        return []

    def verdict(self, pause: int, probability: float) -> list[Event]:
        """Smart Turn's ``probability`` that the turn was finished at pause ``pause``."""
        if self.state is State.PAUSED and pause == self.pause and probability >= self.params.complete_probability:
            return [self._end("smart_turn")]
        return []

    def flush(self) -> list[Event]:
        """End the turn now (the client's ``flush``), if one is under way."""
        if self.state is State.IDLE:
            return []
        if self.state is State.SPEAKING:
            self.pause += 1  # the flushed turn's final is transcribed for this new "pause"
        return [self._end("flush")]

    def _end(self, reason: str) -> TurnEnded:
        self.state = State.IDLE
        self._run = 0
        return TurnEnded(self.onset, self.speech_end, self.pause, reason)
