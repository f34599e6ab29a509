"""Barge-in that tells an interruption from a backchannel: pause at once, then resume or stop.

pipecat interrupts the bot the moment the VAD hears the user. That stops the bot for every "mm-hm".
In ``pause_resume`` mode this processor (just before the user aggregator) instead pauses the bot's audio
at the output transport as soon as the VAD fires, so the caller hears it stop just as fast, and then:

- the user keeps talking for ``min_speech_secs`` after the VAD fired: a real interruption;
- the speech was shorter, and its transcript asks the bot to stop ("stop", "wait", "no"...) or has two
  words that are neither acknowledgements nor fillers ("try again"): an interruption too. Short sounds
  are where a small STT is least reliable (tiny.en hears "mm-hm" as "and the MHM", or as "and then make
  them"), so fillers and hums do not count, and the words must survive the STT's second reading where it
  offers one (the ``whisper`` kind's ``SecondReading``: the audio decoded again, primed to expect an
  acknowledgement);
- the words are acknowledgements ("mm-hm", "yeah", "okay"): a backchannel, and the bot resumes where it
  paused at once. What was said stays out of the LLM context (a ``UserBackchannelFrame``);
- other short words ("so", "in short", "and I'm") are as often the start of a sentence said in parts, and
  a bot that resumed at once played into its pause (bench/conversation.py): the bot stays paused until
  the user has been quiet for ``resume_within_secs``, and speech before then is the user going on;
- the user speaks again within ``resume_within_secs`` of a resume: they are talking, not acknowledging,
  and the words taken for an acknowledgement join their turn ("And I'm | Sheila in Texas": the start of a
  sentence over the bot, one word of meaning, had been lost); so those words wait out that window before
  they go on as a ``UserBackchannelFrame``;
- no words came ``resume_within_secs`` after the pause: an interruption if the user is still speaking,
  otherwise noise, and the bot resumes; but not before the STT has had its usual time to deliver the
  words (:class:`TranscriptLag`), nor while words that came are still being judged (a second reading takes
  ~0.1 s: the bot had resumed for 80 ms in between, then stopped for those words).

Speech in a gap inside a reply (its next phrase still being synthesized) counts as speech over the bot:
pipecat's ``BotStoppedSpeakingFrame`` fires in such a gap, but the reply only ends when the assistant
aggregator broadcasts its ``LLMContextAssistantTurnFrame``. Without this, an "mm-hm" said in a 1 s gap on a
loaded machine cut off the rest of the answer. Speech after the reply ended is the user's turn, at once.

A real interruption is pipecat's: an ``InterruptionFrame`` both ways, which drops the paused audio.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMContextAssistantTurnFrame,
    TranscriptionFrame,
    UserBackchannelFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from vivavoce.frames import BotOutputPauseFrame

BACKCHANNELS = (
    "mm-hm", "mm-hmm", "mm hm", "mhm", "mm", "hmm", "hm", "uh-huh", "uh huh", "yeah", "yes", "yep", "yup",
    "okay", "ok", "right", "sure", "i see", "got it", "alright", "all right", "ah", "oh", "uh", "um",
    "cool", "nice", "wow", "really", "true", "exactly", "indeed", "go on",
)  # fmt: skip


STOP_WORDS = (
    "stop", "wait", "hold on", "hang on", "no", "excuse me", "sorry", "hey", "hello", "pause", "quiet",
    "enough", "shut up", "what", "actually", "but",
)  # fmt: skip
"""Words that ask the bot to stop even in short speech. "Hello" is a caller taking the floor (or asking if
anyone is there): "Oh, hello." said over a long reply had been taken for an acknowledgement, the reply
went on and the greeting was never answered (bench/conversation.py, a real phone call)."""


MID_REPLY_GAP_SECS = 3.0
"""A reply whose end never came (no assistant text to aggregate) counts as over after this much silence."""


COMMIT_WAIT_SECS = 0.3
"""Words that stop a reply wait up to this long for the context to hold the reply as heard. The assistant
aggregator, at the pipeline's end, adds it once the interruption reaches it; the words, answered at once
(vivavoce.end_of_turn's early answer), had reached the LLM first: "Try again." was answered as if the bot
had said nothing, the user's last two utterances run together as one message (bench/conversation.py: the
prompt grew by those words alone). When nothing of the reply was heard nothing is added, and the wait ends
at this bound."""


FILLERS = ("and", "the", "a", "an", "so", "well", "uh", "um", "er", "eh", "like", "i", "it")


HUM = re.compile(r"(?:[mh]+-?)+a?|u+h+|a+h+")
"""Hums as a small STT spells them: "mm", "mmm", "hmm", "mm-hmm", "m-m-h-m", "mma", "uhh", "ahh"."""


def content_words(text: str) -> list[str]:
    """Words that carry meaning: not fillers, not acknowledgements."""
    remaining = re.sub(r"[^\w\s'-]", " ", text.lower())
    for phrase in sorted(BACKCHANNELS, key=len, reverse=True):
        remaining = re.sub(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", " ", remaining)
    return [w for w in remaining.split() if w not in FILLERS and not HUM.fullmatch(w)]


def _mentions(text: str, phrases: tuple[str, ...]) -> bool:
    joined = " ".join(re.sub(r"[^\w\s'-]", " ", text.lower()).split())
    return any(re.search(rf"(?<![\w-]){re.escape(p)}(?![\w-])", joined) for p in phrases)


def is_backchannel(text: str, backchannels: tuple[str, ...] = BACKCHANNELS) -> bool:
    """Whether ``text`` is only acknowledgements ("yeah, okay." counts; "yeah but wait" does not)."""
    words = re.sub(r"[^\w\s'-]", " ", text.lower()).split()
    if not words:
        return True
    joined = " ".join(words)
    for phrase in sorted(backchannels, key=len, reverse=True):
        joined = re.sub(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", " ", joined)
    return all(HUM.fullmatch(w) for w in joined.split())


class TranscriptLag:
    """How long after the VAD stops this session's STT delivers a transcript, as seen on its last ones.

    A resume for lack of words waits that long after the speech ended: on a loaded 2-core machine tiny.en
    delivered "from Chicago also." 0.44 s after the VAD stopped, past the end of the resume window, and
    the bot resumed into the user's sentence until those words stopped it (bench/conversation.py).
    """

    UNSEEN_SECS = 0.5
    """The wait before any transcript has been seen."""
    MARGIN = 1.5
    """The wait is the slowest of the recent lags times this..."""
    BOUNDS = (0.3, 1.0)
    """...within these bounds (a slower STT leaves noise pausing the bot too long)."""

    def __init__(self, recent: int = 8):
        self._lags: deque[float] = deque(maxlen=recent)

    def seen(self, lag: float) -> None:
        """A transcript came ``lag`` seconds after the VAD stopped."""
        if 0 <= lag <= 2 * self.BOUNDS[1]:  # beyond that it answered other speech (a streaming STT)
            self._lags.append(lag)

    def wait(self) -> float:
        """How long after the VAD stops a transcript may still come."""
        if not self._lags:
            return self.UNSEEN_SECS
        low, high = self.BOUNDS
        return min(high, max(low, self.MARGIN * max(self._lags)))


async def _sleep_until(at: float) -> None:
    """Sleep until ``at`` on the event loop's clock (not at all if that has passed)."""
    left = at - asyncio.get_running_loop().time()
    if left > 0:
        await asyncio.sleep(left)


def _as_backchannel(frame: TranscriptionFrame) -> UserBackchannelFrame:
    """The same words, sent on as an acknowledgement rather than a turn."""
    return UserBackchannelFrame(frame.text, frame.user_id, frame.timestamp)


class BargeInController(FrameProcessor):
    """Pause-then-resume barge-in (see the module docstring). Place it just before the user aggregator.

    Event handlers: ``on_bot_paused(processor)``, ``on_bot_resumed(processor, reason)`` and
    ``on_bot_interrupted(processor, reason)``.
    """

    def __init__(
        self,
        *,
        min_speech_secs: float = 0.8,
        resume_within_secs: float = 1.2,
        stop_words: tuple[str, ...] = STOP_WORDS,
        vad_stop_secs: float = 0.2,
        has_stt: bool = True,
        **kwargs: Any,
    ):
        """Decide barge-ins by speech length and by the transcript (``has_stt``) or by length alone.

        ``vad_stop_secs``: the VAD reports the end of speech this late, so speech is long enough only if
        the VAD still hears it ``min_speech_secs + vad_stop_secs`` after it fired.
        """
        # It decides from flags and timers and waits only for a short transcript's second reading: it runs
        # in the pushing processor's task (pipecat's direct mode) rather than paying a queue and a task
        # switch per 20 ms frame.
        super().__init__(enable_direct_mode=True, **kwargs)
        self._vad_stop_secs = vad_stop_secs
        self._min_speech_secs = min_speech_secs
        self._resume_within_secs = resume_within_secs
        self._stop_words = stop_words
        self._has_stt = has_stt
        self._bot_speaking = False
        self._reply_open = False  # from the bot's first sound until the assistant aggregator ends the reply
        self._bot_stopped_at = 0.0
        self._user_speaking = False
        self._user_stopped_at: float | None = None  # until the transcript of that speech came
        self._speech_ended_at = 0.0  # when the VAD last stopped
        self._transcript_lag = TranscriptLag()
        self._paused = False
        self._outcome: str | None = None  # how the latest pause ended: "resumed" or "interrupted"
        self._resumed_at: float | None = None
        self._deadline: asyncio.Task | None = None
        self._held: tuple[TranscriptionFrame, FrameDirection] | None = None  # words taken for a backchannel
        self._held_until: asyncio.Task | None = None
        self._last_reading: tuple[int, str] | None = None  # (frame id, second reading): asked for once
        self._words_read = asyncio.Event()  # clear while a transcript over the paused bot is being judged
        self._words_read.set()
        self._reply_kept = asyncio.Event()  # clear from stopping a reply until the context holds it as heard
        self._reply_kept.set()
        self._kept_by = 0.0  # (loop time) the wait for it ends then at the latest
        self._deferred: deque[tuple[TranscriptionFrame, FrameDirection]] = deque()  # words waiting for it
        self._deferring: asyncio.Task | None = None
        self._register_event_handler("on_bot_paused")
        self._register_event_handler("on_bot_resumed")
        self._register_event_handler("on_bot_interrupted")

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Watch the VAD, the bot and the transcripts; forward everything but backchannel transcripts."""
        await super().process_frame(frame, direction)
        if isinstance(frame, EndFrame):
            await self._release_held(as_words=False)
            if self._deferring is not None:
                await self.cancel_task(self._deferring)
                self._deferring = None
            await self._flush_deferred()
        if isinstance(frame, TranscriptionFrame) and self._user_stopped_at is not None:
            self._transcript_lag.seen(asyncio.get_running_loop().time() - self._user_stopped_at)
            self._user_stopped_at = None
        if isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = self._reply_open = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
            self._bot_stopped_at = asyncio.get_running_loop().time()
        elif isinstance(frame, LLMContextAssistantTurnFrame):
            self._reply_open = False
            self._reply_kept.set()
        elif isinstance(frame, InterruptionFrame):
            self._reply_open = False
            if self._paused:
                self._outcome = "interrupted"
            self._end_pause()
        elif isinstance(frame, VADUserStartedSpeakingFrame) and not self._user_speaking:
            self._user_speaking = True
            await self.push_frame(frame, direction)
            await self._on_speech_started()
            return
        elif isinstance(frame, VADUserStoppedSpeakingFrame) and self._user_speaking:
            self._user_speaking = False
            self._user_stopped_at = self._speech_ended_at = asyncio.get_running_loop().time()
            await self.push_frame(frame, direction)
            if self._paused and not self._has_stt:
                await self._resume("short speech")  # no transcript will come: length alone decides
            return
        elif isinstance(frame, TranscriptionFrame) and self._paused:
            self._words_read.clear()
            try:
                if await self._judge_words(frame, direction):
                    return
            finally:
                self._words_read.set()
        elif isinstance(frame, TranscriptionFrame) and self._over_the_bot() and await self._acknowledges(frame):
            # A backchannel heard while the bot speaks (e.g. in a gap between its sentences).
            await self.push_frame(_as_backchannel(frame), direction)
            return
        if isinstance(frame, TranscriptionFrame):
            await self._push_words(frame, direction)
            return
        await self.push_frame(frame, direction)

    async def _push_words(self, frame: TranscriptionFrame, direction: FrameDirection) -> None:
        """Send words into the user's turn once the context holds the reply they stopped (``COMMIT_WAIT_SECS``),
        in order. The wait runs in a task of its own: the task pushing the words (the STT's) is the one the
        interruption resets, and the words would be lost with it."""
        if asyncio.get_running_loop().time() >= self._kept_by:
            self._reply_kept.set()
        if self._reply_kept.is_set() and not self._deferred:
            await self.push_frame(frame, direction)
            return
        self._deferred.append((frame, direction))
        if self._deferring is None:
            self._deferring = self.create_task(self._push_deferred(), name="barge-in-words-after-reply")

    async def _push_deferred(self) -> None:
        try:
            await asyncio.wait_for(self._reply_kept.wait(), self._kept_by - asyncio.get_running_loop().time())
        except TimeoutError:
            logger.debug(f"{self}: no reply was added to the context after the barge-in (nothing of it was heard)")
        self._reply_kept.set()
        self._deferring = None
        await self._flush_deferred()

    async def _flush_deferred(self) -> None:
        while self._deferred:
            await self.push_frame(*self._deferred.popleft())

    async def _judge_words(self, frame: TranscriptionFrame, direction: FrameDirection) -> bool:
        """Decide on words said over the paused bot: stop it, keep it paused for the window, or resume it.
        Returns whether the words were held (as a backchannel, or until the window decides)."""
        text = frame.text.strip()
        stop = await self._asks_to_stop(frame)
        acknowledges = not stop and await self._acknowledges(frame)
        if self._outcome == "interrupted":
            return False  # decided while the second reading ran (the user kept talking): the words are a turn
        if stop:
            await self._interrupt(f"words {text!r}")
            return False
        if self._paused and not acknowledges:
            # Perhaps the first words of a sentence: the bot stays paused, the window decides.
            logger.debug(f"{self}: {text!r} is no acknowledgement: the bot stays paused for the window")
        elif self._paused:
            await self._resume(f"backchannel {text!r}")
        await self._hold(frame, direction)
        return True

    async def _asks_to_stop(self, frame: TranscriptionFrame) -> bool:
        """Whether short speech over the bot asks it to stop: a stop word, or two words that mean something.

        Words that only a small STT's misreading of a hum produced do not count: when the STT offers a
        second reading (``frame.result.as_backchannel()``, e.g. the ``whisper`` kind's), the words must
        survive it too.
        """
        text = frame.text.strip()
        if _mentions(text, self._stop_words):
            return True
        if len(content_words(text)) < 2:
            return False
        return len(content_words(await self._second_reading(frame))) >= 2

    async def _acknowledges(self, frame: TranscriptionFrame) -> bool:
        """Whether the words are only acknowledgements, as the STT first heard them or on its second reading."""
        return is_backchannel(frame.text) or is_backchannel(await self._second_reading(frame))

    async def _second_reading(self, frame: TranscriptionFrame) -> str:
        """The STT's reading of the speech as an acknowledgement, where it offers one; else the transcript."""
        reread = getattr(frame.result, "as_backchannel", None)
        if reread is None:
            return frame.text
        if self._last_reading is not None and self._last_reading[0] == frame.id:
            return self._last_reading[1]
        second = await reread()
        self._last_reading = (frame.id, second)
        logger.debug(f"{self}: {frame.text.strip()!r} read again expecting an acknowledgement: {second!r}")
        return second

    def _over_the_bot(self) -> bool:
        """Whether the bot is speaking, or is in a gap inside a reply that has more to say."""
        if self._bot_speaking:
            return True
        gap = asyncio.get_running_loop().time() - self._bot_stopped_at
        return self._reply_open and gap < MID_REPLY_GAP_SECS

    async def _on_speech_started(self) -> None:
        if not self._over_the_bot():
            # Nothing is playing: stop whatever the bot is preparing, as pipecat does on every turn.
            await self.broadcast_interruption()
            return
        if self._paused:
            if self._held is not None:
                await self._interrupt("going on after short words")
            return
        loop = asyncio.get_running_loop()
        if self._resumed_at is not None and loop.time() - self._resumed_at < self._resume_within_secs:
            await self._interrupt("speaking again right after a backchannel")
            return
        self._paused, self._outcome = True, None
        await self.push_frame(BotOutputPauseFrame(paused=True))
        await self._call_event_handler("on_bot_paused")
        self._deadline = self.create_task(self._decide_by_time(), name="barge-in-deadline")

    async def _decide_by_time(self) -> None:
        await asyncio.sleep(self._min_speech_secs + self._vad_stop_secs)
        if self._paused and self._user_speaking:
            await self._interrupt(f"speech longer than {self._min_speech_secs}s")
            return
        await asyncio.sleep(max(0.0, self._resume_within_secs - self._min_speech_secs - self._vad_stop_secs))
        if self._paused and not self._user_speaking:
            await self._wait_for_words()
        await self._words_read.wait()  # words that came are judged first: they may stop the bot or hold it
        if self._paused and not self._user_speaking and self._held is not None:
            await self._wait_for_more_words()
        if self._paused and self._user_speaking:
            await self._interrupt("still speaking at the end of the resume window")
        elif self._paused and self._held is not None:
            await self._resume(f"{self._held[0].text.strip()!r} did not go on")
            await self._hold(*self._held)  # a new window: speech in it joins these words
        elif self._paused:
            await self._resume("short speech the STT found no words in")

    async def _wait_for_words(self) -> None:
        """Give the STT its usual time after the speech ended to deliver words (they end this wait)."""
        if not self._has_stt or self._user_stopped_at is None:
            return
        wait = self._transcript_lag.wait()
        logger.debug(f"{self}: no words yet; waiting up to {wait:.2f}s after the speech for the transcript")
        await _sleep_until(self._user_stopped_at + wait)

    async def _wait_for_more_words(self) -> None:
        """Short words that were no acknowledgement: give the user ``resume_within_secs`` of quiet after them
        to go on (speech in it interrupts, :meth:`_on_speech_started`)."""
        await _sleep_until(self._speech_ended_at - self._vad_stop_secs + self._resume_within_secs)

    async def _resume(self, reason: str) -> None:
        self._end_pause()
        self._outcome = "resumed"
        self._resumed_at = asyncio.get_running_loop().time()
        await self.push_frame(BotOutputPauseFrame(paused=False))
        logger.debug(f"{self}: bot resumed ({reason})")
        await self._call_event_handler("on_bot_resumed", reason)

    async def _interrupt(self, reason: str) -> None:
        self._end_pause()
        if self._reply_open:
            self._reply_kept.clear()
            self._kept_by = asyncio.get_running_loop().time() + COMMIT_WAIT_SECS
        # The reply is over: the InterruptionFrame broadcast here never passes through this processor, and
        # speech that follows is the user's turn, not a backchannel over a reply still "open".
        self._bot_speaking = self._reply_open = False
        self._outcome = "interrupted"
        self._resumed_at = None
        logger.debug(f"{self}: barge-in ({reason})")
        await self._call_event_handler("on_bot_interrupted", reason)
        await self.broadcast_interruption()
        await self._release_held(as_words=True)  # words taken for an acknowledgement start the user's turn

    async def _hold(self, frame: TranscriptionFrame, direction: FrameDirection) -> None:
        """Keep short words over the bot until the resume window is over (see the module docstring); words
        already held go on as the acknowledgement they were, unless these are they (a new window)."""
        if self._held is not None and self._held[0] is frame:
            if self._held_until is not None:
                await self.cancel_task(self._held_until)
        else:
            await self._release_held(as_words=False)
        self._held = (frame, direction)
        self._held_until = self.create_task(self._release_after_window(), name="barge-in-held-words")

    async def _release_after_window(self) -> None:
        await asyncio.sleep(self._resume_within_secs)
        await self._release_held(as_words=False)

    async def _release_held(self, *, as_words: bool) -> None:
        """Send the held words on: into the user's turn (``as_words``), or as the backchannel they were."""
        held, self._held = self._held, None
        task, self._held_until = self._held_until, None
        if task is not None and task is not asyncio.current_task():
            await self.cancel_task(task)
        if held is None:
            return
        frame, direction = held
        if as_words:
            logger.debug(f"{self}: {frame.text.strip()!r} was the start of the user's turn, not a backchannel")
            await self._push_words(frame, direction)
        else:
            await self.push_frame(_as_backchannel(frame), direction)

    def _end_pause(self) -> None:
        self._paused = False
        if self._deadline is not None and self._deadline is not asyncio.current_task():
            self._deadline.cancel()
        self._deadline = None
