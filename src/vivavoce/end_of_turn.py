"""End of turn from what was heard and what was said: Smart Turn, the transcript, and the pause so far.

pipecat's stock stop strategy asks Smart Turn (audio only) once the VAD stops; if Smart Turn says "not
finished" the turn waits for its 3 s silence fallback. On real speech it had never heard, Smart Turn
called many finished sentences unfinished (dead air) and many sentences cut by a pause finished (the bot
talked into the pause): bench/conversation.py measures both, bench/README.md has the figures. Audio alone
cannot tell "He was not an ill-disposed young man." from "He was not an ... [pause]" as well as the words.

:class:`AdaptiveTurnStopStrategy` weighs three pieces of evidence at each pause:

- **Smart Turn v3** (the model pipecat bundles): the probability that the audio sounds finished;
- **the words**: the probability, from SmolLM2-135M (the LLM the embedded bot already loads), that the
  transcript so far ends a sentence, given the bot's last words. The transcript's own final punctuation is
  stripped first (Whisper puts a full stop at the end of almost every segment, finished or not); the model
  is asked for the probability that the next token ends the sentence (``.``, ``?``, ``!`` or the end of the
  message). LiveKit's open turn detector is a SmolLM2 fine-tuned for this; the instruct model already
  separates finished sentences from sentences cut at a word boundary (bench/README.md);
- **the pause itself**: the surer the evidence that the user is not done, the longer the wait, up to
  ``max_silence_secs``; a confident "finished" ends the turn after ``min_silence_secs``.

The wait never exceeds ``max_silence_secs`` (0.9 s by default, where pipecat's fallback is 3 s), and a
pause that ends before the bot's first audio costs nothing: the user's resumed speech interrupts the
answer before it is heard, and the turn goes on.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from loguru import logger
from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn, SmartTurnParams
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    LLMContextFrame,
    MetricsFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import MetricsData, TurnMetricsData
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.turns.types import ProcessFrameResult
from pipecat.turns.user_stop.base_user_turn_stop_strategy import BaseUserTurnStopStrategy

from vivavoce.frames import AnswerGateFrame
from vivavoce.model_store import models
from vivavoce.packaged_models import smart_turn_v3
from vivavoce.processors.smollm import PromptCache, load_packaged

TEXT_THRESHOLD = 0.05
"""Sentence-end probability at which the words alone are neutral: between what finished sentences and
sentences cut at a word boundary score (bench/README.md)."""

_FINAL_PUNCTUATION = re.compile(r"[\s.?!,;:…-]+$")
_TRAILING_OPEN = re.compile(r"(,|;|:|-|\.\.\.|…)\s*$")


SMART_TURN_STOP_SECS = 10.0


class KeepingSmartTurn(LocalSmartTurnAnalyzerV3):
    """Smart Turn v3 that keeps the turn's audio after a verdict, has no silence fallback, and shares
    one ONNX session with every other session of the process.

    pipecat's analyzer drops its buffer when it says "complete" and ends the turn itself after
    ``stop_secs`` of silence; here the strategy decides when the turn ends, and a pause judged finished
    may still be followed by more speech, which must be judged with what came before it. pipecat's also
    loads the model for each session, on the event loop: here it loads once (:func:`smart_turn_session`),
    before the first session when the models are preloaded, and ONNX Runtime runs it for many at once.
    """

    def __init__(self, **kwargs: Any):
        """Create the analyzer over the process-wide model."""
        # The silence fallback is the strategy's max_silence_secs (at most 10 s); this one must never fire
        # first. It also bounds the audio kept between turns (pre-speech + stop_secs + max duration).
        BaseSmartTurn.__init__(self, params=SmartTurnParams(stop_secs=SMART_TURN_STOP_SECS), **kwargs)
        self._log_data = False
        self._session = smart_turn_session()

    async def probability(self) -> tuple[float | None, MetricsData | None]:
        """The probability that the speech so far is a finished turn (None: no speech yet)."""
        if not self._audio_buffer:
            return None, None
        loop = asyncio.get_running_loop()
        _state, metrics = await loop.run_in_executor(
            self._model_executor, self._process_speech_segment, list(self._audio_buffer)
        )
        if isinstance(metrics, TurnMetricsData):
            return metrics.probability, metrics
        return None, metrics


class SentenceEndModel:
    """The probability that a transcript ends a sentence, from a small causal LM with a chat template.

    ``lm`` is a :class:`vivavoce.processors.smollm.LoadedLM` (SmolLM2-135M-Instruct by default). The prompt
    is the last bot message (if any) and the user's words without their final punctuation, as the chat
    template writes them, cut before the end-of-message token.
    """

    def __init__(self, lm: Any):
        """Score with ``lm``'s model and tokenizer (its float32 copy where it has one: a scoring only reads)."""
        self._lm = lm
        self._model = lm.reader
        tokenizer = lm.tokenizer
        vocab = tokenizer.get_vocab()
        ends = [i for token, i in vocab.items() if re.fullmatch(r"[.?!]+", token.replace("Ġ", ""))]
        end_of_message = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(end_of_message, int) and end_of_message >= 0:
            ends.append(end_of_message)
        self._end_ids = sorted(set(ends))
        self._prompt_cache = PromptCache()
        # One per process, one thread: on two cores, two scorings at once would not finish sooner.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sentence-end")

    def probability_sync(self, user_text: str, bot_text: str | None = None) -> float:
        """P(the next token ends the sentence | the conversation so far); runs the model."""
        import torch

        text = _FINAL_PUNCTUATION.sub("", user_text.strip())
        if not text:
            return 0.0
        messages = []
        if bot_text:
            messages.append({"role": "assistant", "content": bot_text.strip()[-300:]})
        messages.append({"role": "user", "content": text})
        tokenizer = self._lm.tokenizer
        prompt = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt = prompt[: prompt.rfind("<|im_end|>")]
        ids = tokenizer(prompt)["input_ids"]
        # The template's header and the bot's words repeat from pause to pause: only the user's words
        # are new (~10 tokens instead of ~50).
        cache = self._prompt_cache.prepare(self._model, ids)
        done = cache.get_seq_length()
        with torch.inference_mode():
            logits = (
                self._model(input_ids=torch.tensor([ids[done:]]), past_key_values=cache, use_cache=True)
                .logits[0, -1]
                .float()
            )
        self._prompt_cache.update(ids)
        return float(torch.softmax(logits, -1)[self._end_ids].sum())

    async def probability(self, user_text: str, bot_text: str | None = None) -> float:
        """As :meth:`probability_sync`, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.probability_sync, user_text, bot_text)


def smart_turn_session() -> Any:
    """Smart Turn v3's ONNX Runtime session, loaded once per process (``run`` is safe from many threads)."""
    import onnxruntime as ort

    path = smart_turn_v3()

    def load() -> Any:
        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1  # as pipecat's analyzer: one core per verdict, verdicts in parallel
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(path), sess_options=options)

    return models.get(("smart-turn", str(path)), load, label="Smart Turn v3")


def sentence_end_model() -> SentenceEndModel:
    """The process-wide sentence-end scorer over the bundled SmolLM2 (shared with a ``smollm`` LLM)."""
    lm = load_packaged("bfloat16", threads=1)
    return models.get(("sentence-end", id(lm)), lambda: SentenceEndModel(lm), label="sentence-end scorer")


AUDIO_WEIGHT = 0.5
"""Smart Turn's log-odds count half: on real speech it is often all but certain that half a sentence is
finished where the words say otherwise (bench/conversation.py's split sentences; figures in bench/README.md)."""


@dataclass
class Evidence:
    """What is known about the current pause; None where a source has not answered (or is off)."""

    audio: float | None = None
    text: float | None = None
    words: int = 0
    punctuation_open: bool = False

    def score(self) -> float:
        """Log-odds that the user is done: > 0 finished, < 0 not (each source clipped, then summed).

        The words can say "not finished" with full weight only from four words on: a short reply is
        often a complete turn the model expects to go on ("No matter." -> "no matter what").
        """
        total = 0.0
        if self.audio is not None:
            p = min(max(self.audio, 1e-4), 1 - 1e-4)
            total += AUDIO_WEIGHT * max(-3.0, min(3.0, math.log(p / (1 - p))))
        if self.text is not None:
            floor = -3.0 * min(1.0, self.words / FULL_WEIGHT_WORDS)
            total += max(floor, min(3.0, math.log(max(self.text, 1e-6) / TEXT_THRESHOLD)))
        if self.punctuation_open:
            total -= 1.0
        return total


ONSET_RATIO = 0.25
"""Input this close to the turn's loudest speech (RMS, -12 dB) is the user going on, not the room."""
ONSET_FLOOR_RMS = 150.0
"""...and never quieter than this (int16 RMS, about -47 dBFS)."""
ONSET_SECS = 0.04
"""Loud input this long holds an answer not heard yet."""
ONSET_HOLD_SECS = 0.5
"""An answer held on loud input plays once the input has been quiet this long and the VAD has not confirmed
speech meanwhile (a cough, a door)."""
ONSET_MAX_HOLD_SECS = 2.0
"""...and at the latest this long after the hold, however loud the input (a noisy room). While the user is
still audible the answer stays held: under load the VAD can confirm resumed speech later than
ONSET_HOLD_SECS, and an answer released then talks over the rest of the sentence (bench/README.md)."""

RESUME_MARGIN_SECS = 0.3
"""Beyond the VAD's start_secs, how late it can report speech that resumed in a pause (an early answer is
held this long after its verdict's pause, unless the verdict was "finished")."""

INPUT_LAG_BACKSTOP_SECS = 1.0
"""An early answer is released once the input up to its time has been watched (the input reaches the
strategy late on a loaded machine); if input audio stops coming, it is released this long after its time."""

FULL_WEIGHT_WORDS = 4
"""Transcripts this long or longer can veto the audio's "finished" with full weight."""

SURE_FINISHED = 1.0
"""Score from which the shortest pause ends the turn."""
SURE_UNFINISHED = -1.5
"""Score from which the turn waits the longest pause."""


def silence_needed(score: float, min_silence_secs: float, max_silence_secs: float) -> float:
    """How long a pause must last before the turn ends, given the evidence's log-odds ``score``.

    Sure it is finished (score >= 1): ``min_silence_secs``; sure it is not (score <= -1.5):
    ``max_silence_secs``; in between, in proportion. An unsure verdict thus waits ~0.5 s: a finished
    sentence is still answered within a second, and a longer mid-sentence pause is not cut into.
    """
    if score >= SURE_FINISHED:
        return min_silence_secs
    if score <= SURE_UNFINISHED:
        return max_silence_secs
    share = (SURE_FINISHED - score) / (SURE_FINISHED - SURE_UNFINISHED)
    return min_silence_secs + (max_silence_secs - min_silence_secs) * share


class AdaptiveTurnStopStrategy(BaseUserTurnStopStrategy):
    """Ends the user's turn when the pause is as long as the evidence asks for (see the module docstring).

    ``audio``: Smart Turn v3 or None; ``sentence_end``: a :class:`SentenceEndModel` or None;
    ``context``: the conversation (the bot's last words help judge the user's); ``wait_for_transcript``:
    False where no STT runs (the turn then ends on audio and the pause alone).

    ``gate``: an :class:`vivavoce.processors.answer_gate.AnswerGate` sits before the output. Until an answer
    is heard, the input is then watched: speech resuming (the caller's level back near their speech's, for
    40 ms) holds the answer at the gate at once, where the VAD confirms speech only ``start_secs`` (or more,
    on a soft word) later. The VAD's start then interrupts the answer unheard; if it never comes (a
    cough), the answer plays ``ONSET_HOLD_SECS`` later.

    ``early_answer`` (needs ``gate``): end the turn as soon as the pause's words are transcribed, so the LLM
    and the TTS work while the evidence is weighed, and hold the answer's audio until the pause has
    lasted as long as the verdict asks, plus the time the VAD needs to hear the user resume.
    """

    def __init__(
        self,
        *,
        audio: KeepingSmartTurn | None,
        sentence_end: SentenceEndModel | None,
        context: LLMContext | None = None,
        min_silence_secs: float = 0.2,
        max_silence_secs: float = 0.9,
        wait_for_transcript: bool = True,
        early_answer: bool = False,
        gate: bool = False,
        clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ):
        """Create the strategy; see the class docstring."""
        super().__init__(**kwargs)
        self._early_answer = early_answer and gate
        self._gate = gate
        self._answer = 0  # numbers the answers, for the AnswerGate
        self._heard_answer = 0  # the number of the last answer the user heard begin
        self._watching: int | None = None  # the answer not heard yet, held if the user is heard going on
        self._watch_not_before = 0.0
        self._speech_rms = 0.0  # loudest 20 ms of the turn's speech
        self._loud_secs = 0.0
        self._reheld = False
        self._last_loud = 0.0  # time.monotonic() of the last loud input while an answer is held
        self._releasing: int | None = None  # the early answer waiting for this pause's verdict
        self._pending: tuple[int, float] | None = None  # a released answer and its time, waiting for the input
        self._heard_secs = 0.0  # input audio watched since the user stopped speaking
        self._resume_secs = 0.2  # how long the VAD takes to hear speech resume (its start_secs)
        self._audio = audio
        self._sentence_end = sentence_end
        self._context = context
        self._min_silence = min_silence_secs
        self._max_silence = max_silence_secs
        self._wait_for_transcript = wait_for_transcript
        self._clock = clock
        self._text = ""
        self._vad_speaking = False
        self._speech_end: float | None = None  # wall-clock time the user stopped (VAD stop - stop_secs)
        self._evidence = Evidence()
        self._segments_pending = 0  # VAD segments whose transcript has not come yet
        self._pause = 0  # counts pauses, so late answers about an earlier pause are ignored
        self._timer: asyncio.Task | None = None
        self._deadline: float | None = None
        self._fired = False
        self._early: tuple[str, asyncio.Task] | None = None  # words read before the transcript was final

    @property
    def wait_for_transcript(self) -> bool:
        """Whether the turn waits for words (pipecat flips this for realtime services)."""
        return self._wait_for_transcript

    @wait_for_transcript.setter
    def wait_for_transcript(self, value: bool) -> None:
        self._wait_for_transcript = value

    async def setup(self, setup: FrameProcessorSetup) -> None:
        """Set up the strategy and the audio model's rate."""
        await super().setup(setup)
        if self._audio is not None:
            self._audio.set_sample_rate(setup.audio_in_sample_rate)

    async def cleanup(self) -> None:
        """Stop the timer and release the audio model's thread."""
        await super().cleanup()
        await self._cancel_timer()
        if self._audio is not None:
            await self._audio.cleanup()

    async def handle_user_turn_started(self) -> None:
        """A new turn: forget the last one's words and evidence (an answer held for it was interrupted)."""
        self._releasing = None
        self._watching = None
        self._speech_rms = 0.0
        await self._reset()

    async def handle_user_turn_stopped(self) -> None:
        """The turn ended (here or elsewhere): forget its audio too.

        An answer started early keeps this pause's evidence coming: its verdict releases the answer.
        """
        if self._audio is not None:
            self._audio.clear()
        if self._releasing is not None:
            return
        await self._reset()

    async def _reset(self) -> None:
        self._text = ""
        self._early = None
        self._segments_pending = 0
        self._fired = False
        await self._new_pause()

    async def _new_pause(self) -> None:
        self._pause += 1
        self._evidence = Evidence()
        self._speech_end = None
        await self._cancel_timer()

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        """Follow the VAD, the audio and the transcripts; end the turn when the pause is long enough."""
        await super().process_frame(frame)
        if isinstance(frame, InputAudioRawFrame):
            if self._audio is not None:
                self._audio.append_audio(frame.audio, self._vad_speaking)
            if self._gate:
                await self._watch(frame)
                if not self._vad_speaking:
                    self._heard_secs += len(frame.audio) / 2 / (frame.sample_rate or 16000)
                    await self._release_when_heard()
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._vad_speaking = True
            self._watching = None  # the VAD heard the user: its start interrupts an answer not heard
            self._resume_secs = frame.start_secs
            if self._audio is not None:
                self._audio.update_vad_start_secs(frame.start_secs)
            await self._new_pause()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._vad_speaking = False
            await self._on_pause(frame)
        elif isinstance(frame, TranscriptionFrame):
            await self._on_transcript(frame)
        elif isinstance(frame, InterimTranscriptionFrame):
            self._score_early(frame.text)
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._watching = None  # heard: from here barge-in decides
            self._heard_answer = self._answer
        return ProcessFrameResult.CONTINUE

    async def _watch(self, frame: InputAudioRawFrame) -> None:
        """Follow the caller's level; hold the answer not heard yet when they are heard going on."""
        if not self._vad_speaking and self._watching is None:
            return  # most frames of a call: nothing to measure
        samples = np.frombuffer(frame.audio, dtype=np.int16).astype(np.float32)
        if not len(samples):
            return
        rms = float(np.sqrt(np.mean(samples * samples)))
        if self._vad_speaking:
            self._speech_rms = max(self._speech_rms, rms)
            return
        loud = rms >= max(ONSET_FLOOR_RMS, ONSET_RATIO * self._speech_rms)
        if self._reheld:
            if loud:
                self._last_loud = time.monotonic()  # still audible: the hold goes on (see _unhold)
            return
        if not loud:
            self._loud_secs = 0.0
            return
        self._loud_secs += len(samples) / (frame.sample_rate or 16000)
        if self._loud_secs >= ONSET_SECS:
            self._reheld = True
            self._last_loud = time.monotonic()
            answer = self._watching
            logger.debug(f"{self}: the user is heard going on: answer {answer} held")
            await self.push_frame(AnswerGateFrame(answer=answer, hold=True))
            self.task_manager.create_task(self._unhold(answer), f"{self}::unhold")

    async def _unhold(self, answer: int) -> None:
        """The VAD never confirmed the speech: play the held answer after all, once the input has gone
        quiet (at the latest ONSET_MAX_HOLD_SECS after the hold)."""
        latest = time.monotonic() + ONSET_MAX_HOLD_SECS
        await asyncio.sleep(ONSET_HOLD_SECS)
        while self._watching == answer and time.monotonic() - self._last_loud < ONSET_HOLD_SECS:
            if time.monotonic() >= latest:
                break
            await asyncio.sleep(0.05)
        if self._watching == answer and self._releasing != answer:
            self._pending = None
            await self.push_frame(
                AnswerGateFrame(answer=answer, hold=False, not_before=max(self._clock(), self._watch_not_before))
            )

    async def _arm(self, *, hold: bool) -> None:
        """Number the answer about to be written and tell the gate (held, or open but watched)."""
        self._answer += 1
        self._watching, self._reheld, self._loud_secs = self._answer, False, 0.0
        self._pending = None  # an earlier answer still waiting for its input is superseded (the gate drops it)
        self._watch_not_before = 0.0
        if hold:
            self._releasing = self._answer
        await self.push_frame(AnswerGateFrame(answer=self._answer, hold=hold, not_before=None if hold else 0.0))

    def _score_early(self, interim: str) -> None:
        """Read an early transcript of the words so far now, so the verdict is ready when the pause is."""
        if self._sentence_end is None or not interim.strip():
            return
        text = f"{self._text} {' '.join(interim.split())}".strip()
        if self._early is not None and self._early[0] == text:
            return
        logger.debug(f"{self}: reading the early transcript [{text}]")
        self._early = (text, self.task_manager.create_task(self._text_probability(text), f"{self}::early_words"))

    async def _text_probability(self, text: str) -> float:
        assert self._sentence_end is not None
        return await self._sentence_end.probability(text, self._last_bot_words())

    async def _on_pause(self, frame: VADUserStoppedSpeakingFrame) -> None:
        self._speech_end = frame.timestamp - frame.stop_secs
        self._heard_secs = frame.stop_secs  # the VAD stops after this much silence
        if self._wait_for_transcript:
            self._segments_pending += 1
        self._schedule(self._speech_end + self._max_silence)  # the fallback, whatever the evidence says
        if self._audio is not None:
            # Off the aggregator's frame path: its VAD must go on hearing the user meanwhile.
            self.task_manager.create_task(self._hear(self._pause), f"{self}::hear_pause")
        else:
            await self._decide(self._pause)

    async def _hear(self, pause: int) -> None:
        assert self._audio is not None
        probability, metrics = await self._audio.probability()
        if metrics is not None:
            await self.push_frame(MetricsFrame(data=[metrics]))
        if pause == self._pause:
            self._evidence.audio = probability
            await self._decide(pause)

    async def _on_transcript(self, frame: TranscriptionFrame) -> None:
        text = " ".join(frame.text.split())
        if text:
            self._text = f"{self._text} {text}".strip()
        self._segments_pending = max(0, self._segments_pending - 1)
        if self._speech_end is None:
            if self._vad_speaking:
                return
            # Words with no VAD pause before them (a streaming STT, or a transcript-started turn): the
            # pause is taken to start now.
            self._speech_end = self._clock()
            self._schedule(self._speech_end + self._max_silence)
        if self._early_answer and self._text and not self._segments_pending and not self._fired:
            await self._start_answer()
        if self._sentence_end is not None and self._text and not self._segments_pending:
            self.task_manager.create_task(self._read(self._pause, self._text), f"{self}::read_words")
        else:
            await self._decide(self._pause)

    async def _start_answer(self) -> None:
        """End the turn now, the answer held until this pause's verdict (see ``early_answer``)."""
        self._fired = True
        logger.debug(f"{self}: answering early, held until the verdict [{self._text}]")
        await self._arm(hold=True)
        await self.trigger_user_turn_stopped()

    async def _release(self, at: float) -> None:
        """Let the early answer play at ``at``: once the input up to then has been watched for the user
        going on. On a loaded machine the input reaches the strategy a few hundred ms late; an answer let
        go by the wall clock then played just as the user went on, before the watch could hear them."""
        answer, self._releasing = self._releasing, None
        if answer is None:
            return
        self._watch_not_before = at
        if self._speech_end is None:
            await self.push_frame(AnswerGateFrame(answer=answer, hold=False, not_before=at))
            return
        self._pending = (answer, at)
        self.task_manager.create_task(self._backstop(answer, at), f"{self}::release_backstop")
        await self._release_when_heard()

    async def _release_when_heard(self) -> None:
        if self._pending is None:
            return
        answer, at = self._pending
        if self._watching != answer:
            self._pending = None  # the VAD heard the user: the answer is interrupted unheard
        elif not self._reheld and self._speech_end is not None and self._heard_secs > at - self._speech_end - 1e-3:
            self._pending = None  # (an answer held on loud input is released by _unhold)
            await self.push_frame(AnswerGateFrame(answer=answer, hold=False, not_before=max(at, self._clock())))

    async def _backstop(self, answer: int, at: float) -> None:
        await asyncio.sleep(max(0.0, at + INPUT_LAG_BACKSTOP_SECS - self._clock()))
        if self._pending == (answer, at) and self._watching == answer and not self._reheld:
            logger.warning(f"{self}: no input audio {INPUT_LAG_BACKSTOP_SECS}s past answer {answer}'s time; playing it")
            self._pending = None
            await self.push_frame(AnswerGateFrame(answer=answer, hold=False, not_before=self._clock()))

    async def _read(self, pause: int, text: str) -> None:
        early, self._early = self._early, None
        if early is not None and early[0] == text:
            probability = await early[1]  # read from the early transcript: the same words
        else:
            probability = await self._text_probability(text)
        if pause != self._pause or text != self._text:
            return  # the user went on, or more words came: a later reading decides
        self._evidence.text = probability
        self._evidence.words = len(text.split())
        self._evidence.punctuation_open = bool(_TRAILING_OPEN.search(text))
        await self._decide(pause)

    def _last_bot_words(self) -> str | None:
        if self._context is None:
            return None
        for message in reversed(self._context.get_messages()):
            if isinstance(message, dict) and message.get("role") == "assistant":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):
                    return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        return None

    def _ready(self) -> bool:
        """Every source that is on has answered for this pause."""
        if self._audio is not None and self._evidence.audio is None:
            return False
        if self._wait_for_transcript and (self._segments_pending or not self._text):
            return False
        if self._sentence_end is not None and self._wait_for_transcript and self._evidence.text is None:
            return False
        return True

    async def _decide(self, pause: int) -> None:
        if pause != self._pause or self._speech_end is None or self._vad_speaking:
            return
        if not self._ready():
            return
        score = self._evidence.score()
        wait = silence_needed(score, self._min_silence, self._max_silence)
        logger.debug(
            f"{self}: end-of-turn evidence {(self._clock() - self._speech_end) * 1000:.0f} ms into the pause: "
            f"audio={self._evidence.audio} text={self._evidence.text} open={self._evidence.punctuation_open} "
            f"score={score:.2f} -> {wait:.2f}s of silence [{self._text}]"
        )
        if self._releasing is not None:
            # Speech resuming after `wait` is heard by the VAD only some time later (its start_secs, plus
            # Silero's rise and the audio chunking): an answer released before then would be heard over
            # the user's next words.
            guard = self._resume_secs + RESUME_MARGIN_SECS if wait > self._min_silence else 0.0
            await self._release(self._speech_end + wait + guard)
            return
        self._schedule(self._speech_end + wait)

    def _schedule(self, at: float) -> None:
        if self._deadline is not None and self._timer is not None and at >= self._deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._deadline = at
        self._timer = self.task_manager.create_task(self._fire_at(at, self._pause), f"{self}::end_of_turn")

    async def _fire_at(self, at: float, pause: int) -> None:
        await asyncio.sleep(max(0.0, at - self._clock()))
        self._timer = None
        self._deadline = None
        if pause != self._pause or self._vad_speaking:
            return
        if self._releasing is not None:
            # The evidence never came: the longest pause is over (and the VAD would have heard the user).
            await self._release(self._clock() + self._resume_secs + RESUME_MARGIN_SECS)
            return
        if self._fired:
            return
        if self._wait_for_transcript and not self._text:
            # Nothing was said (or the words are late): a transcript arriving later re-decides.
            # An empty transcript never comes (the STT pushes none): by the longest pause the words are not late.
            if self._context is not None and self._answer > self._heard_answer:  # the last answer was never heard
                await self._answer_again()
            return
        self._fired = True
        if self._gate:
            await self._arm(hold=False)
        await self.trigger_user_turn_stopped()

    async def _answer_again(self) -> None:
        """Answer the user's last words again: their answer was stopped unheard when the VAD heard the user go
        on, and what followed had no words (a sound, or a word the STT dropped: on a phone call tiny.en
        heard nothing in "It was the age of | wisdom"'s last word). That turn added nothing to the context, so
        pipecat's aggregator runs no inference for it, and the words already in the context went unanswered
        until the user spoke again (bench/README.md)."""
        assert self._context is not None
        self._fired = True
        logger.debug(f"{self}: no words after an answer never heard: answering the words before it again")
        if self._gate:
            await self._arm(hold=False)
        await self.trigger_user_turn_stopped()
        await self.push_frame(LLMContextFrame(context=self._context))

    async def _cancel_timer(self) -> None:
        timer, self._timer, self._deadline = self._timer, None, None
        if timer is not None and timer is not asyncio.current_task():
            await self.task_manager.cancel_task(timer)
