"""Per-turn records of a conversation, measured from the frames that cross the pipeline.

A turn is one user utterance and the bot's answer. Times are seconds on the transport's timeline
(for the file transport: the input recording's), taken from the pipeline clock at the moment each
frame was pushed, so observer queueing never skews them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from pipecat.audio.utils import is_silence
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserBackchannelFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.services.tts_service import TTSService
from pipecat.transports.base_output import BaseOutputTransport

from vivavoce.frames import BotOutputPauseFrame, WorkerFailoverFrame

STAGES = ("vad_stop", "stt", "turn_decision", "llm_first_token", "tts_first_audio", "transport")
"""Consecutive parts of voice-to-voice; they add up to it.

user stops -> VAD confirms the silence -> transcript -> end of turn decided (Smart Turn) -> first LLM token
-> first TTS audio -> first audio frame leaves the transport. ``end_of_turn`` in reports is the first three.
"""


def _duration(frame: Any) -> float:
    """Seconds of audio in an audio frame."""
    rate = frame.sample_rate or 0
    return len(frame.audio) / 2 / (frame.num_channels or 1) / rate if rate else 0.0


def _ms(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round((end - start) * 1000, 1)


@dataclass
class BargeIn:
    """The user talking over the bot's answer, timed on the transport timeline (seconds)."""

    vad_fired_s: float
    onset_s: float
    tts_last_s: float | None = None
    audio_end_s: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        """detect: speech onset -> VAD fires; pipeline_stop: VAD fires -> the TTS stops producing;
        audible_stop: VAD fires -> the last bot audio has left the transport."""
        return {
            "detect": _ms(self.onset_s, self.vad_fired_s),
            "pipeline_stop": max(0.0, _ms(self.vad_fired_s, self.tts_last_s) or 0.0),
            "audible_stop": max(0.0, _ms(self.vad_fired_s, self.audio_end_s) or 0.0),
        }


DEFAULT_CHARS_PER_SEC = 14.0
"""Speaking rate assumed for audio whose text never came (Piper's voices speak 13-16 characters a second)."""


@dataclass
class SpokenText:
    """Which words of a reply the user heard: the TTS's text pieces laid over the audio the output played.

    A TTS without word timestamps pushes each piece's text after its audio, and pipecat's assistant
    aggregator drops a piece cut off by an interruption: a reply that played for 5 s before the user cut
    in was reported as its first three words. Here each piece covers the span of generated audio since the
    previous one; what was played of a piece is its words in proportion to its characters.
    """

    pieces: list[tuple[float, float, str]] = field(default_factory=list)
    """(start, end, text): seconds of the reply's generated audio that speak ``text``."""
    generated_secs: float = 0.0
    played_secs: float = 0.0
    reply: str = ""
    """The LLM's text of this reply (for audio cut off before its piece's text came)."""

    def add_piece(self, text: str) -> None:
        """The text of the audio generated since the previous piece."""
        start = self.pieces[-1][1] if self.pieces else 0.0
        self.pieces.append((start, self.generated_secs, text.strip()))

    def heard(self) -> str:
        """The words played, the last one included if any of it was."""
        words: list[str] = []
        for start, end, text in self.pieces:
            if self.played_secs >= end - 0.02:
                words += text.split()
            elif self.played_secs > start:
                words += _leading_words(text, (self.played_secs - start) / max(end - start, 1e-6))
                return " ".join(words)
            else:
                return " ".join(words)
        covered = self.pieces[-1][1] if self.pieces else 0.0
        if self.played_secs > covered + 0.02:
            # Audio whose piece's text never came: the reply's next words, at the rate spoken so far.
            said = sum(len(text) for _, _, text in self.pieces)
            rate = said / covered if covered > 0.5 and said else DEFAULT_CHARS_PER_SEC
            rest = " ".join(self.reply.split()[len(words) :])
            words += _leading_words(rest, (self.played_secs - covered) * rate / max(len(rest), 1))
        return " ".join(words)


def _leading_words(text: str, fraction: float) -> list[str]:
    """The words of ``text`` that start within its first ``fraction`` (by characters)."""
    limit = max(0.0, min(1.0, fraction)) * len(text)
    words, position = [], 0
    for word in text.split():
        position = text.find(word, position)
        if position >= limit:
            break
        words.append(word)
        position += len(word)
    return words


@dataclass
class Failover:
    """A service moved to another model worker mid-call (a :class:`~vivavoce.frames.WorkerFailoverFrame`)."""

    at_s: float
    """When, on the session's timeline (seconds)."""
    service: str
    from_url: str | None
    to_url: str | None
    """None: no other worker could be reached."""
    reason: str
    degraded: bool
    """The new worker lacks state the lost one had (the call goes on, not as it would have)."""

    def to_dict(self) -> dict[str, Any]:
        """The report's JSON form."""
        return {
            "at_s": round(self.at_s, 3),
            "service": self.service,
            "from": self.from_url,
            "to": self.to_url,
            "reason": self.reason,
            "degraded": self.degraded,
        }


@dataclass
class Turn:
    """One user utterance and the bot's answer; times in seconds on the transport timeline."""

    user_text: str = ""
    """What the user said in this turn that reached the LLM's context."""
    backchannels: list[str] = field(default_factory=list)
    """What the user said over the bot that was taken for an acknowledgement ("mm-hm"): kept out of the
    context, so out of ``user_text``."""
    said_text: str = ""
    """What the assistant aggregator added to the context (whole pieces only): used when no audio was traced."""
    user_started_s: float | None = None
    user_stopped_s: float | None = None
    bot_started_s: float | None = None
    bot_stopped_s: float | None = None
    interrupted: bool = False
    barge_in: BargeIn | None = None
    ttfb_ms: dict[str, float] = field(default_factory=dict)
    # Moments the stages are measured between (not reported themselves).
    vad_stopped_s: float | None = None
    transcribed_s: float | None = None
    turn_ended_s: float | None = None
    first_token_s: float | None = None
    first_audio_s: float | None = None
    user_turn_open: bool = True
    spoken: SpokenText = field(default_factory=SpokenText)
    failovers: list[Failover] = field(default_factory=list)
    """Worker failovers while this was the latest turn (one before the first turn: the first): the metrics'."""

    @property
    def completed(self) -> bool:
        """Whether the user said something or the bot answered (a VAD blip with no words is not a turn)."""
        return bool(self.user_text.strip()) or self.bot_started_s is not None

    @property
    def bot_text(self) -> str:
        """What the user heard the bot say (up to where it stopped, if it was cut off)."""
        if self.spoken.played_secs > 0 and (self.spoken.pieces or self.spoken.reply):
            return self.spoken.heard()
        return self.said_text

    @property
    def voice_to_voice_ms(self) -> float | None:
        """User stops speaking -> first bot audio leaves the transport."""
        return _ms(self.user_stopped_s, self.bot_started_s)

    def stages_ms(self) -> dict[str, float | None]:
        """Voice-to-voice split into consecutive stages (they add up to it)."""
        # A streaming STT can finish before the VAD stops: the stt stage is then 0 and the turn
        # decision starts at the VAD stop.
        transcribed = None if self.transcribed_s is None else max(self.transcribed_s, self.vad_stopped_s or 0.0)
        return {
            "vad_stop": _ms(self.user_stopped_s, self.vad_stopped_s),
            "stt": _ms(self.vad_stopped_s, transcribed),
            "turn_decision": _ms(transcribed, self.turn_ended_s),
            "llm_first_token": _ms(self.turn_ended_s, self.first_token_s),
            "tts_first_audio": _ms(self.first_token_s, self.first_audio_s),
            "transport": _ms(self.first_audio_s, self.bot_started_s),
        }

    def to_dict(self) -> dict[str, Any]:
        """The report's JSON form of this turn."""
        rounded = {
            k: (round(v, 3) if isinstance(v, float) else v)
            for k, v in asdict(self).items()
            if k not in ("barge_in", "spoken", "failovers")
        }
        return {
            "user_text": self.user_text.strip(),
            "backchannels": list(self.backchannels),
            "bot_text": self.bot_text.strip(),
            "user_started_s": rounded["user_started_s"],
            "user_stopped_s": rounded["user_stopped_s"],
            "bot_started_s": rounded["bot_started_s"],
            "bot_stopped_s": rounded["bot_stopped_s"],
            "voice_to_voice_ms": self.voice_to_voice_ms,
            "interrupted": self.interrupted,
            "barge_in_ms": self.barge_in.to_dict() if self.barge_in else None,
            "ttfb_ms": {role: self.ttfb_ms.get(role, 0.0) for role in ("stt", "llm", "tts")},
            "end_of_turn_ms": _ms(self.user_stopped_s, self.turn_ended_s),
            "stages_ms": self.stages_ms(),
        }


class TurnRecorder(BaseObserver):
    """Builds :class:`Turn` records and tracks whether the conversation is still busy.

    ``timeline`` converts a pipeline-clock timestamp (ns) to seconds on the transport's timeline;
    ``roles`` maps processor names to ``stt``/``llm``/``tts`` for the TTFB metrics.
    """

    def __init__(
        self,
        timeline: Callable[[int], float],
        roles: dict[str, str] | None = None,
        *,
        speech_onset: Callable[[float, float], float] | None = None,
        on_turn: Callable[[Turn], None] | None = None,
        **kwargs: Any,
    ):
        """Create a recorder; ``roles`` can also be set later, once the processors exist.

        ``speech_onset(vad_fired_s, start_secs)`` finds when the speech the VAD fired on began (the
        file transport knows, from its input); by default it is ``vad_fired_s - start_secs``.
        ``on_turn(turn)`` is called once per turn with words or an answer, when the next turn begins
        or at :meth:`finish`.
        """
        # Only first pushes: re-pushes of every frame by every processor would cost each call's pipeline
        # a queue hop per frame per processor.
        super().__init__(observe_every_push=False, **kwargs)
        self._timeline = timeline
        self._speech_onset = speech_onset or (lambda fired, start_secs: fired - start_secs)
        self._on_turn = on_turn
        self._reported = 0
        self._vad_fired: tuple[float, float] | None = None  # (time, start_secs) of the last VAD start
        self._barge: BargeIn | None = None  # being measured
        self._barge_turn: Turn | None = None
        self._barge_interrupted = False
        self.pauses: list[tuple[float, bool]] = []  # (timeline seconds, paused) of each BotOutputPauseFrame
        self.failovers: list[Failover] = []  # every WorkerFailoverFrame, in order
        self._unattached: list[Failover] = []  # failovers between turns, for the next turn
        self.roles: dict[str, str] = roles or {}
        self.turns: list[Turn] = []
        self._current: Turn | None = None
        self._responding: Turn | None = None  # the turn whose answer is being generated or spoken
        self._acknowledgement: Turn | None = None  # a turn the VAD opened for words taken for an acknowledgement
        self._vad_speaking = False
        self._llm_open = False
        self._tts_open = False
        self._bot_speaking = False
        self.last_activity_s = 0.0

    @property
    def busy(self) -> bool:
        """Someone is talking, a turn is undecided, or the bot is still thinking or speaking."""
        user_turn_open = self._current is not None and self._current.user_turn_open
        return self._vad_speaking or user_turn_open or self._llm_open or self._tts_open or self._bot_speaking

    async def on_push_frame(self, data: FramePushed) -> None:
        """Record what each frame says about the current turn."""
        if not data.first_push:
            return
        frame, at = data.frame, self._timeline(data.timestamp)
        handler = self._HANDLERS.get(type(frame))
        if handler is None:
            for cls, candidate in self._HANDLERS.items():
                if isinstance(frame, cls):
                    handler = candidate
                    break
        if handler is not None:
            handler(self, data, at)

    def _activity(self, at: float) -> None:
        self.last_activity_s = max(self.last_activity_s, at)

    def _vad_started(self, data: FramePushed, at: float) -> None:
        self._vad_speaking = True
        self._vad_fired = (at, data.frame.start_secs)
        self._activity(at)
        current = self._current
        if current is not None and not current.user_turn_open and self._unheard(current):
            # The user went on before hearing any answer: the same turn, which the answer will now
            # follow (the answer begun for its first part is cancelled by this speech).
            current.user_turn_open = True
            current.first_token_s = current.first_audio_s = current.turn_ended_s = None
            current.spoken = SpokenText()
            current.interrupted, current.barge_in = False, None
        elif current is None or not current.user_turn_open:
            # The previous turn's answer may still be interrupted by this speech: report it later.
            self._report_finished(keep_last=1)
            self._new_turn(max(0.0, at - data.frame.start_secs))

    def _new_turn(self, user_started_s: float) -> None:
        self._current = Turn(user_started_s=user_started_s, failovers=self._unattached)
        self._unattached = []
        self.turns.append(self._current)

    def _unheard(self, turn: Turn) -> bool:
        """Whether no answer to ``turn`` has been heard (nor pipecat says the bot spoke)."""
        return turn.bot_started_s is None and not turn.spoken.played_secs and turn.user_text.strip() != ""

    def _vad_stopped(self, data: FramePushed, at: float) -> None:
        self._vad_speaking = False
        self._activity(at)
        if self._current is not None:
            self._current.user_stopped_s = max(0.0, at - data.frame.stop_secs)
            self._current.vad_stopped_s = at

    def _user_started(self, data: FramePushed, at: float) -> None:
        self._activity(at)
        if self._current is None:  # a turn started by a transcript alone, with no VAD event
            self._new_turn(at)

    def _user_stopped(self, data: FramePushed, at: float) -> None:
        self._activity(at)
        current = self._current
        if current is None:
            return
        current.user_turn_open = False
        current.turn_ended_s = at
        answer = self._responding
        if current is self._acknowledgement and not current.user_text.strip() and answer and self._under_way(answer):
            return  # its words went as a backchannel: no LLM runs for it, the answer still playing stays its own
        self._responding = current

    def _transcription(self, data: FramePushed, at: float) -> None:
        self._activity(at)
        if self._current is not None:
            self._current.user_text += " " + data.frame.text.strip()
            self._current.transcribed_s = at

    def _backchannel(self, data: FramePushed, at: float) -> None:
        """The barge-in controller took a transcript for an acknowledgement and pushed this in its place: the
        words never reached the context, so they leave the turn they were recorded in (at the STT's push),
        and are listed with the turn whose answer they were said over."""
        self._activity(at)
        text = data.frame.text.strip()
        recorded_in = next((t for t in reversed(self.turns[-2:]) if text and t.user_text.rstrip().endswith(text)), None)
        if recorded_in is None:
            return
        recorded_in.user_text = recorded_in.user_text.rstrip()[: -len(text)]
        over = recorded_in
        if recorded_in is self.turns[-1] and len(self.turns) > 1 and not recorded_in.completed:
            over = self.turns[-2]  # a turn the VAD opened for the acknowledgement alone: the one answering
            # pipecat's aggregator ends that turn, wordless, only at its stop timeout (5 s): see _user_stopped.
            self._acknowledgement = recorded_in
        over.backchannels.append(text)

    def _llm_started(self, data: FramePushed, at: float) -> None:
        self._llm_open = True
        self._activity(at)

    def _llm_ended(self, data: FramePushed, at: float) -> None:
        self._llm_open = False
        self._activity(at)

    def _llm_text(self, data: FramePushed, at: float) -> None:
        self._activity(at)
        if self._responding is not None:
            if self._responding.first_token_s is None:
                self._responding.first_token_s = at
            self._responding.spoken.reply += data.frame.text

    def _tts_started(self, data: FramePushed, at: float) -> None:
        self._tts_open = True
        self._activity(at)
        if self._barge_interrupted:  # a new answer: the interrupted one has stopped for good
            self._barge = self._barge_turn = None
            self._barge_interrupted = False

    def _tts_stopped(self, data: FramePushed, at: float) -> None:
        self._tts_open = False
        self._activity(at)

    def _tts_audio(self, data: FramePushed, at: float) -> None:
        self._activity(at)
        if self._barge is not None and isinstance(data.source, TTSService):
            self._barge.tts_last_s = at
        if self._responding is not None:
            if self._responding.first_audio_s is None:
                self._responding.first_audio_s = at
            self._responding.spoken.generated_secs += _duration(data.frame)

    def _tts_text(self, data: FramePushed, at: float) -> None:
        if self._responding is not None and not isinstance(data.source, BaseOutputTransport):
            self._responding.spoken.add_piece(data.frame.text)

    def _tts_audio_or_output(self, data: FramePushed, at: float) -> None:
        if isinstance(data.source, BaseOutputTransport):
            self._output_audio(data, at)
        else:
            self._tts_audio(data, at)

    def follow(self, assistant: Any) -> None:
        """Take what the assistant aggregator added to the context, for turns whose audio was not traced
        (the played audio, when there is any, says better what was heard)."""

        @assistant.event_handler("on_assistant_turn_stopped")
        async def _spoken(_aggregator: Any, message: Any) -> None:
            if self._responding is not None and message.content:
                self._responding.said_text = (self._responding.said_text + " " + message.content).strip()

    def _bot_started(self, data: FramePushed, at: float) -> None:
        self._bot_speaking = True
        self._activity(at)
        if self._responding is not None and self._responding.bot_started_s is None:
            self._responding.bot_started_s = at

    def _bot_stopped(self, data: FramePushed, at: float) -> None:
        self._bot_speaking = False
        self._activity(at)
        if self._responding is not None and not self._responding.spoken.played_secs:
            self._responding.bot_stopped_s = at  # no played audio traced: pipecat's own account

    def _interruption(self, data: FramePushed, at: float) -> None:
        # Every user turn broadcasts one; it cuts the bot off only if an answer was under way.
        answer = self._responding
        if answer is not None and answer is self._current and answer.user_turn_open:
            return  # the user went on before any answer was heard: nothing was cut off
        if answer is not None and (self._under_way(answer) or self._barge):
            answer.interrupted = True
            self._start_barge(answer)
            self._barge_interrupted = True
            answer.barge_in = self._barge

    def _under_way(self, answer: Turn) -> bool:
        """Whether ``answer`` is still being written or spoken: the LLM or TTS is at work, or audio made for it
        is not yet played, where the played audio is traced; else pipecat's bot-speaking flag, which stays up
        ~0.35 s after the last audio (speech the VAD hears within that time, 64 ms of it is enough, came after
        the answer had ended by itself)."""
        if self._llm_open or self._tts_open:
            return True
        if answer.spoken.played_secs > 0:
            return answer.spoken.generated_secs > answer.spoken.played_secs + 0.03
        return self._bot_speaking

    def _pause(self, data: FramePushed, at: float) -> None:
        self.pauses.append((at, data.frame.paused))
        answer = self._responding
        if data.frame.paused and answer is not None and self._under_way(answer):
            self._start_barge(answer)
        elif not data.frame.paused and not self._barge_interrupted:
            self._barge = self._barge_turn = None  # resumed: it was a backchannel or noise

    def _start_barge(self, answer: Turn) -> None:
        if self._barge is not None or self._vad_fired is None:
            return
        fired, start_secs = self._vad_fired
        self._barge = BargeIn(vad_fired_s=fired, onset_s=self._speech_onset(fired, start_secs))
        self._barge_turn = answer

    def _output_audio(self, data: FramePushed, at: float) -> None:
        # Output transports push each audio frame on once it has started playing: the report's times and
        # words are those of the audio the user heard.
        end = at + _duration(data.frame)
        if self._barge is not None:
            self._barge.audio_end_s = end
        answer = self._responding
        if answer is not None:
            if not answer.spoken.played_secs:
                answer.bot_started_s = at
            answer.spoken.played_secs += _duration(data.frame)
            if not is_silence(data.frame.audio):  # the silence TTS services pad an answer with is not heard
                answer.bot_stopped_s = end

    def _failover(self, data: FramePushed, at: float) -> None:
        frame = data.frame
        failover = Failover(at, frame.service, frame.from_url, frame.to_url, frame.reason, frame.degraded)
        self.failovers.append(failover)
        # On the latest turn, which is not handed to on_turn (the metrics) before the next one begins; before
        # the first turn, on the first.
        (self._current.failovers if self._current is not None else self._unattached).append(failover)

    @property
    def degraded(self) -> bool:
        """Whether a failover lost state: the call went on, but not as it would have."""
        return any(f.degraded for f in self.failovers)

    def report_fields(self) -> dict[str, Any]:
        """The report's session-level ``failovers`` (timeline seconds, service, from, to, reason, degraded)
        and ``degraded``."""
        return {"failovers": [f.to_dict() for f in self.failovers], "degraded": self.degraded}

    def _metrics(self, data: FramePushed, at: float) -> None:
        target = self._responding or self._current
        if target is None:
            return
        for item in data.frame.data:
            role = self.roles.get(item.processor)
            if isinstance(item, TTFBMetricsData) and role and item.value > 0 and role not in target.ttfb_ms:
                target.ttfb_ms[role] = round(item.value * 1000, 1)

    _HANDLERS: dict[type, Callable[[TurnRecorder, FramePushed, float], None]] = {
        VADUserStartedSpeakingFrame: _vad_started,
        VADUserStoppedSpeakingFrame: _vad_stopped,
        UserStartedSpeakingFrame: _user_started,
        UserStoppedSpeakingFrame: _user_stopped,
        TranscriptionFrame: _transcription,
        UserBackchannelFrame: _backchannel,
        LLMFullResponseStartFrame: _llm_started,
        LLMFullResponseEndFrame: _llm_ended,
        LLMTextFrame: _llm_text,
        TTSStartedFrame: _tts_started,
        TTSStoppedFrame: _tts_stopped,
        TTSAudioRawFrame: _tts_audio_or_output,
        TTSTextFrame: _tts_text,
        BotStartedSpeakingFrame: _bot_started,
        BotStoppedSpeakingFrame: _bot_stopped,
        InterruptionFrame: _interruption,
        BotOutputPauseFrame: _pause,
        MetricsFrame: _metrics,
        WorkerFailoverFrame: _failover,
    }
    observed_frame_types = tuple(_HANDLERS)
    """What the recorder acts on (see :mod:`vivavoce.conversation_worker`)."""

    def _report_finished(self, keep_last: int) -> None:
        """Hand finished turns to ``on_turn``: all but the last ``keep_last`` turns so far."""
        if self._on_turn is None:
            return
        done = self.turns[self._reported : len(self.turns) - keep_last]
        self._reported += len(done)
        for turn in done:
            if turn.completed:
                self._on_turn(turn)

    def finish(self) -> None:
        """The session is over: report the turns not reported yet."""
        self._report_finished(keep_last=0)

    def completed_turns(self) -> list[Turn]:
        """Turns in which the user said something (a VAD blip with no words is not a turn)."""
        return [t for t in self.turns if t.completed]


def summarize(turns: list[Turn]) -> dict[str, Any]:
    """p50/p90/mean/max of voice-to-voice and of each stage over the answered turns."""

    def stats(values: list[float]) -> dict[str, float] | None:
        if not values:
            return None
        ordered = sorted(values)
        return {
            "p50": round(statistics.median(ordered), 1),
            "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1),
            "mean": round(statistics.fmean(ordered), 1),
            "max": round(ordered[-1], 1),
        }

    answered = [t for t in turns if t.voice_to_voice_ms is not None]
    result: dict[str, Any] = {
        "turns": len(turns),
        "answered": len(answered),
        "voice_to_voice_ms": stats([t.voice_to_voice_ms for t in answered]),  # type: ignore[misc]
    }
    result["stages_ms"] = {
        stage: stats([v for t in answered if (v := t.stages_ms()[stage]) is not None]) for stage in STAGES
    }
    return result
