"""faster-whisper STT for conversation turns: a shared model, a short encoder window, an early start.

pipecat's ``WhisperSTTService`` runs faster-whisper's ``transcribe`` once the VAD says the user stopped.
Two things make that slow for a short utterance on a CPU, and this service fixes both:

- faster-whisper pads every input to Whisper's 30 s window, so the encoder costs the same for "yes" as
  for 30 s of speech, and is most of a short utterance's transcription. An utterance that fits a 10 s
  window is encoded in that window instead, several times faster, and decoded with a length cap so a short
  window cannot loop. Longer ones take faster-whisper's own path. The short window costs words: Whisper
  was trained on 30 s windows, and on real speech it makes more errors (bench/stt_window.py, figures in
  bench/README.md); ``window_secs=30`` keeps Whisper's own window where words matter more than time.
- The VAD needs ``stop_secs`` of silence to call the end of speech. The service starts transcribing as
  soon as the audio goes quiet and, if the pause was the end of the utterance, uses that result. That
  early transcript is also pushed as an ``InterimTranscriptionFrame`` the moment it is ready, still inside
  the VAD's silence window, so the end-of-turn strategy can read the words before the turn is due.

pipecat keeps a segment only if Whisper's no-speech probability is below ``no_speech_prob`` (0.4). Whisper
itself skips a segment only if that probability is high *and* the words were decoded with little
confidence (average log-probability below -1): a part that continues a sentence after a pause, read
alone, looks to Whisper like the middle of nothing. tiny.en wrote the second part of "others call | me
mother nature." confidently as "Me, Mother Nature." with a no-speech probability above pipecat's threshold,
and pipecat's filter lost the words from the turn (bench/stt_parts.py counts such parts; figures in
bench/README.md). So a segment decoded with confidence that holds a word counts as speech here
(:func:`judged`), as in Whisper.

Short utterances also get a second reading on request: their final ``TranscriptionFrame`` carries a
:class:`SecondReading` (``frame.result``) that decodes the same audio again with Whisper primed to expect
an acknowledgement. tiny.en writes a hummed "mm-hm" as words ("and then make them", "in the micham")
in about a third of Piper's renderings; primed, it reads most of them as "Mm-hm", while a short real
interruption ("try again", "tell me more") reads the same both ways. The barge-in controller asks for
it only for short speech over the bot whose words would stop the reply.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncGenerator, TypeVar

import numpy as np
from faster_whisper import WhisperModel
from loguru import logger
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.whisper.stt import WhisperSTTService
from pipecat.utils.time import time_now_iso8601

from vivavoce.model_store import models
from vivavoce.packaged_models import ModelNotFoundError, whisper_tiny_en

if TYPE_CHECKING:
    from vivavoce.build_context import BuildContext
    from vivavoce.processors.catalog import WhisperConfig

# Segmented STT finalises every transcript, so turn detection never waits on this; it only
# silences pipecat's warning. It is set above tiny.en int8's time for an utterance on 2 cores on
# faster-whisper's standard path (bench/README.md, the local_latency.py section).
TINY_EN_P99_SECS = 0.6

S = TypeVar("S")

SAMPLE_RATE = 16000
PAUSE_SECS = 0.08
"""Quiet this long while the user is speaking starts a speculative transcription."""
QUIET_RATIO = 0.1
"""A frame is quiet below this fraction of the utterance's loudest frame (RMS)."""
QUIET_FLOOR = 60.0
"""...or below this RMS (int16), whichever is higher."""
LOGPROB_THRESHOLD = -1.0
"""Whisper's ``logprob_threshold``: words decoded with a higher average log-probability are speech."""
BACKCHANNEL_PROMPT = " Mm-hmm. Uh-huh. Hmm."
"""The previous-text prompt of the second reading: acknowledgements, spelled as Whisper writes them."""


def model_dir(model: str) -> Path:
    """``tiny.en`` (bundled) or a local CTranslate2 directory; vivavoce never downloads weights."""
    if model == "tiny.en":
        return whisper_tiny_en()
    path = Path(model).expanduser()
    if not (path / "model.bin").is_file():
        raise ModelNotFoundError(
            f"whisper model '{model}' is neither the bundled 'tiny.en' nor a local CTranslate2 directory "
            "(with model.bin): convert or download it once, then give its path"
        )
    return path


def load_whisper(model: str, device: str, compute_type: str) -> WhisperModel:
    """The faster-whisper model, loaded once per process and warmed up."""
    path = model_dir(model)

    def load() -> WhisperModel:
        # One thread per core: more would make its OpenMP pool fight the other models for two cores.
        whisper = WhisperModel(str(path), device=device, compute_type=compute_type, cpu_threads=os.cpu_count() or 0)
        # The first transcription pays for lazy initialisation: pay it at start-up, not in a turn.
        list(whisper.transcribe(np.zeros(16000, dtype=np.float32), language="en")[0])
        return whisper

    return models.get(("whisper", str(path), device, compute_type), load, label=f"faster-whisper {model}")


@dataclass(frozen=True)
class Utterance:
    """What pipecat's ``run_stt`` reads from a faster-whisper segment, plus what a second reading needs."""

    text: str
    no_speech_prob: float
    avg_logprob: float = 0.0
    encoded: Any = None
    """The encoder's output (short window only), kept for :meth:`SpeculativeTranscriber.reread`."""
    max_length: int = 0
    language: str | None = None


class SecondReading:
    """The ``result`` of a short utterance's ``TranscriptionFrame``: its audio, read again on request."""

    def __init__(self, transcriber: SpeculativeTranscriber, utterance: Utterance):
        """Keep what a second decoding of ``utterance`` needs (its encoder output)."""
        self._transcriber = transcriber
        self._utterance = utterance

    async def as_backchannel(self) -> str:
        """The transcript with Whisper primed to expect an acknowledgement (a decoder pass, tens of ms)."""
        return await self._transcriber.reread(self._utterance, BACKCHANNEL_PROMPT)


class SpeculativeTranscriber:
    """One session's view of the shared model: short windows, greedy decoding, transcriptions started early.

    ``speculate(audio)`` starts transcribing in the background; a later ``transcribe(audio)`` whose audio
    begins with exactly the speculated audio (the user said nothing more) returns that result.
    ``window_secs``: utterances that fit (with 0.5 s to spare) are encoded in a window this long
    instead of 30 s; 30 always uses faster-whisper's own ``transcribe``.
    """

    def __init__(self, model: WhisperModel, *, window_secs: float = 10.0, beam_size: int = 1):
        """Wrap the shared ``model``."""
        self._model = model
        self._window_frames = int(window_secs * 100)  # Whisper's mel frames are 10 ms
        self._beam_size = beam_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper-speculation")
        self._pending: tuple[np.ndarray, dict[str, Any], Future] | None = None
        self._dropped: threading.Event | None = None  # set when the speculation in flight is discarded
        self.reused = 0
        self.last: list[Any] = []
        """The segments of the latest ``transcribe``."""

    @property
    def supported_languages(self) -> list[str]:
        """The model's languages (pipecat checks the configured one against them)."""
        return self._model.supported_languages

    def speculate(self, audio: np.ndarray, **options: Any) -> Future:
        """Start transcribing ``audio`` in the background; the future's result is ``transcribe``'s."""
        self._dropped = threading.Event()
        future = self._executor.submit(self._run, audio, options, self._dropped)
        self._pending = (audio, options, future)
        return future

    def discard(self) -> None:
        """The user went on speaking: the speculation will not be used, nor run if not started, nor decoded if
        being encoded (the decoder's ~60 ms would hold back the next transcription on a small CPU)."""
        if self._pending is not None:
            self._pending[2].cancel()
        if self._dropped is not None:
            self._dropped.set()
        self._pending = self._dropped = None

    def transcribe(self, audio: np.ndarray, **options: Any) -> tuple[list[Any], Any]:
        """Transcribe ``audio``, reusing the speculation when the user said nothing after it."""
        pending, self._pending = self._pending, None
        dropped, self._dropped = self._dropped, None
        if pending is not None:
            spoken, spoken_options, future = pending
            # The speculation was padded with silence; compare only the audio it really heard.
            heard = len(spoken) - _padding(spoken)
            same_start = len(audio) >= heard and np.array_equal(audio[:heard], spoken[:heard])
            if (
                options == spoken_options
                and same_start
                and _is_quiet(audio[heard : len(audio) - _padding(audio)], spoken[:heard])
            ):
                self.reused += 1
                logger.debug(f"Reusing the speculative transcription (done: {future.done()})")
                result = future.result()
                self.last = result[0]
                return result
            future.cancel()
            if dropped is not None:
                dropped.set()
        result = self._run(audio, options)
        self.last = result[0]
        return result

    async def reread(self, utterance: Utterance, prompt: str) -> str:
        """``utterance``'s audio decoded again after ``prompt`` as the previous text (short window only)."""
        if utterance.encoded is None:
            return utterance.text
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._reread, utterance, prompt)

    def _reread(self, utterance: Utterance, prompt: str) -> str:
        tokenizer = self._tokenizer(utterance.language)
        start = [tokenizer.sot_prev, *tokenizer.encode(prompt), *tokenizer.sot_sequence, tokenizer.no_timestamps]
        return self._generate(utterance.encoded, tokenizer, start, len(start) + utterance.max_length)[0]

    def _generate(
        self, encoded: Any, tokenizer: Any, start: list[int], max_length: int, **options: Any
    ) -> tuple[str, Any]:
        """Greedy (or ``beam_size``) decoding of ``encoded`` after ``start``: the text and ctranslate2's result."""
        result = self._model.model.generate(
            encoded,
            [start],
            beam_size=self._beam_size,
            max_length=max_length,
            suppress_blank=True,
            suppress_tokens=[-1],
            **options,
        )[0]
        return " " + tokenizer.decode(result.sequences_ids[0]).strip(), result

    def _run(
        self, audio: np.ndarray, options: dict[str, Any], dropped: threading.Event | None = None
    ) -> tuple[list[Any], Any]:
        started = time.perf_counter()
        seconds = len(audio) / SAMPLE_RATE
        short = (
            seconds + 0.5 <= self._window_frames / 100 < 30
            and not options.get("initial_prompt")
            and not options.get("hotwords")
        )
        if short:
            result: list[Any] = [self._transcribe_short(audio, options.get("language"), dropped)]
            info = None
        else:
            segments, info = self._model.transcribe(
                audio, beam_size=self._beam_size, without_timestamps=True, condition_on_previous_text=False, **options
            )
            result = [judged(segment) for segment in segments]
        path = "short window" if short else "30 s window"
        logger.debug(f"whisper ({path}): {seconds:.1f}s of audio in {(time.perf_counter() - started) * 1000:.0f}ms")
        return result, info

    def _tokenizer(self, language: str | None) -> Any:
        from faster_whisper.tokenizer import Tokenizer

        model = self._model
        return Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language or "en")

    def _transcribe_short(
        self, audio: np.ndarray, language: str | None, dropped: threading.Event | None = None
    ) -> Utterance:
        import ctranslate2
        from faster_whisper.audio import pad_or_trim

        model = self._model
        features = pad_or_trim(model.feature_extractor(audio), self._window_frames)
        encoded = model.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])))
        if dropped is not None and dropped.is_set():
            logger.debug("whisper (short window): speculation discarded after encoding, not decoded")
            raise CancelledError
        tokenizer = self._tokenizer(language)
        # Speech runs at most ~5 tokens a second; a cap well above that stops any runaway repetition.
        max_length = int(12 + 8 * len(audio) / SAMPLE_RATE)
        start = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        text, result = self._generate(
            encoded, tokenizer, start, max_length, return_no_speech_prob=True, return_scores=True
        )
        tokens = len(result.sequences_ids[0])
        return judged(
            Utterance(
                text=text,
                no_speech_prob=result.no_speech_prob,
                avg_logprob=result.scores[0] * tokens / (tokens + 1),  # as faster-whisper computes it
                encoded=encoded,
                max_length=max_length,
                language=language,
            )
        )

    def close(self) -> None:
        """Stop the background thread (after the speculation in flight)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def judged(segment: S) -> S:
    """``segment`` with a no-speech probability of 0 if Whisper's own rule calls it speech: its words were
    decoded with an average log-probability above ``LOGPROB_THRESHOLD`` and hold a letter. pipecat's filter
    then keeps it whatever the no-speech token said (see the module docstring)."""
    if segment.avg_logprob > LOGPROB_THRESHOLD and re.search(r"[^\W\d_]", segment.text):
        return dataclasses.replace(segment, no_speech_prob=0.0)
    return segment


def _is_quiet(audio: np.ndarray, speech: np.ndarray) -> bool:
    """Whether no 20 ms stretch of ``audio`` is loud compared with ``speech`` (float samples)."""
    frame = SAMPLE_RATE // 50
    speech_frames = speech[: len(speech) // frame * frame].reshape(-1, frame)
    peak = float(np.sqrt((speech_frames**2).mean(axis=1)).max()) if len(speech_frames) else 0.0
    threshold = max(QUIET_FLOOR / 32768.0, QUIET_RATIO * peak)
    frames = audio[: len(audio) // frame * frame].reshape(-1, frame)
    return not len(frames) or float(np.sqrt((frames**2).mean(axis=1)).max()) < threshold


def _padding(audio: np.ndarray) -> int:
    """Trailing exact zeros (the silence pipecat appends to a segment)."""
    nonzero = np.flatnonzero(audio)
    return len(audio) - (nonzero[-1] + 1 if len(nonzero) else 0)


class SharedWhisperSTTService(WhisperSTTService):
    """pipecat's ``WhisperSTTService`` over the process-wide model, transcribing from the first pause.

    ``speculate=False`` transcribes only once the VAD has stopped; ``window_secs=30`` keeps Whisper's
    standard 30 s window for every utterance.
    """

    def __init__(self, *, speculate: bool = True, window_secs: float = 10.0, **kwargs: Any):
        """Create the service; see :class:`WhisperSTTService` for the other arguments."""
        self._speculate = speculate
        self._window_secs = window_secs
        super().__init__(**kwargs)
        self._peak_rms = 0.0
        self._quiet_secs = 0.0
        self._speculated = False
        self._speculation = 0  # counts speculations, so a stale one's transcript is never pushed

    def _load(self) -> None:
        shared = load_whisper(str(self._settings.model), self._device, self._compute_type)
        self._model = SpeculativeTranscriber(shared, window_secs=self._window_secs)

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame, None]:
        """pipecat's transcription; a short utterance's frame carries its :class:`SecondReading`."""
        async for frame in super().run_stt(audio):
            segments = self._model.last
            if isinstance(frame, TranscriptionFrame) and len(segments) == 1 and isinstance(segments[0], Utterance):
                frame.result = SecondReading(self._model, segments[0])
            yield frame

    async def cleanup(self) -> None:
        """Release the speculation thread."""
        await super().cleanup()
        self._model.close()

    async def _handle_user_started_speaking(self, frame: VADUserStartedSpeakingFrame) -> None:
        await super()._handle_user_started_speaking(frame)
        self._peak_rms, self._quiet_secs, self._speculated = 0.0, 0.0, False
        self._speculation += 1

    async def process_audio_frame(self, frame: InputAudioRawFrame, direction: FrameDirection) -> None:
        """Buffer the audio as pipecat does, and start a transcription when the speaker pauses."""
        await super().process_audio_frame(frame, direction)
        if not (self._user_speaking and self._speculate):
            return
        samples = np.frombuffer(frame.audio, dtype=np.int16).astype(np.float32)
        if not len(samples):
            return
        rms = float(np.sqrt(np.mean(samples * samples)))
        self._peak_rms = max(self._peak_rms, rms)
        if rms >= max(QUIET_FLOOR, QUIET_RATIO * self._peak_rms):
            self._quiet_secs = 0.0
            if self._speculated:
                logger.debug(f"{self}: speech resumed, speculative transcription discarded")
                self._model.discard()
                self._speculated = False
                self._speculation += 1
            return
        self._quiet_secs += len(samples) / frame.sample_rate
        if self._quiet_secs >= PAUSE_SECS and not self._speculated:
            self._speculated = True
            logger.debug(f"{self}: pause, transcribing speculatively")
            pcm = bytes(self._audio_buffer) + self._trailing_silence()
            audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
            future = self._model.speculate(audio, **self._transcribe_options())
            self._speculation += 1
            speculation, loop = self._speculation, asyncio.get_running_loop()
            future.add_done_callback(lambda done: loop.call_soon_threadsafe(self._speculation_done, done, speculation))

    def _speculation_done(self, future: Future, speculation: int) -> None:
        """Push the early transcript while it still describes what the user has said."""
        # Once the VAD has stopped, the final transcript is on its way: an interim after it would say
        # that more is coming when nothing is.
        stale = speculation != self._speculation or not self._user_speaking
        if stale or future.cancelled() or future.exception() is not None:
            return
        segments, _info = future.result()
        threshold = self._settings.no_speech_prob
        text = " ".join(s.text.strip() for s in segments if threshold is None or s.no_speech_prob < threshold)
        if text.strip():
            frame = InterimTranscriptionFrame(text.strip(), self._user_id, time_now_iso8601())
            self.create_task(self.push_frame(frame), name="whisper-interim")

    def _transcribe_options(self) -> dict[str, Any]:
        """The options pipecat's ``run_stt`` passes, so a speculation matches the final call."""
        return {
            "language": self._settings.language,
            "hotwords": self._settings.hotwords,
            "initial_prompt": self._settings.initial_prompt,
        }


def create(config: WhisperConfig, context: BuildContext) -> SharedWhisperSTTService:
    """Factory for the ``whisper`` kind."""
    return SharedWhisperSTTService(
        speculate=config.speculate,
        window_secs=config.window_secs,
        device=config.device,
        compute_type=config.compute_type,
        ttfs_p99_latency=TINY_EN_P99_SECS,
        settings=SharedWhisperSTTService.Settings(
            model=config.model, language=config.language, no_speech_prob=config.no_speech_prob
        ),
    )


def preload(config: WhisperConfig) -> None:
    """Load the model before the first session."""
    load_whisper(config.model, config.device, config.compute_type)
