"""One ``WS /v1/asr`` stream: decode and resample its audio, run its VAD and turn logic, send its events.

Events go out in the order they happen, through one queue: ``speech_start``, ``partial``..., ``speech_end``,
``final`` of one turn before anything of the next (a final whose transcription is still running holds what
follows it; at the pause the turn's final is already being transcribed, so that wait is short).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import numpy as np
import soxr
from loguru import logger
from starlette.websockets import WebSocket

from vivavoce_asr.engine import LONGEST_WINDOW_SAMPLES, Job, ModelThread, Transcript
from vivavoce_asr.protocol import (
    DEFAULT_ENCODING,
    DEFAULT_LANGUAGE,
    ENCODINGS,
    MAX_AUDIO_FRAME_BYTES,
    MODEL_RATE,
    AsrError,
    ConfigMessage,
    parse_text,
)
from vivavoce_asr.turns import Paused, Resumed, SpeechStarted, State, TurnDetector, TurnEnded, TurnParams
from vivavoce_asr.vad import WINDOW
from vivavoce_worker.protocol import ProtocolError
from vivavoce_worker.socket_loop import RequestSocket


@dataclass(frozen=True)
class SessionSettings:
    """What every stream shares: turn settings, partial cadence, pre-roll."""

    turn: TurnParams = TurnParams()
    partial_interval_secs: float = 0.5  # 0: no partials
    preroll_secs: float = 0.3  # audio before the VAD's onset that Whisper also hears


BIG_FRAME_SAMPLES = MODEL_RATE  # frames longer than this run their VAD in a thread
ONSET_MARGIN_SECS = 0.1  # how much earlier than the VAD's onset a word may start


def _seconds(samples: int) -> float:
    return round(samples / MODEL_RATE, 3)


class AudioBuffer:
    """16 kHz audio by absolute sample position; forgets what no turn can need any more."""

    def __init__(self) -> None:
        """Empty, at position 0."""
        self._chunks: list[np.ndarray] = []
        self.start = 0  # position of the first kept sample
        self.end = 0  # position after the last sample

    def append(self, samples: np.ndarray) -> None:
        """Add samples at the end."""
        if len(samples):
            self._chunks.append(samples)
            self.end += len(samples)

    def between(self, begin: int, end: int) -> np.ndarray:
        """Samples ``[begin, end)`` (clipped to what is kept)."""
        begin, end = max(begin, self.start), min(end, self.end)
        if end <= begin:
            return np.zeros(0, dtype=np.float32)
        audio = np.concatenate(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        self._chunks = [audio]  # concatenated once, not at every request
        return audio[begin - self.start : end - self.start]

    def forget_before(self, position: int) -> None:
        """Drop whole chunks that end before ``position``."""
        while self._chunks and self.start + len(self._chunks[0]) <= position:
            self.start += len(self._chunks.pop(0))
        if self._chunks and position > self.start:
            cut = position - self.start
            self._chunks[0] = self._chunks[0][cut:]
            self.start = position


class AsrSession(RequestSocket):
    """The state of one stream; its socket's receive loop (:meth:`run`) is the workers' shared one, and its
    work task sends the events in order (:meth:`work`)."""

    route = "/v1/asr"

    def __init__(self, ws: WebSocket, models: ModelThread, settings: SessionSettings):
        """A stream with the default config until the client sends its own."""
        super().__init__(ws)
        self.models = models
        self.settings = settings
        self.sample_rate = MODEL_RATE
        self.encoding = DEFAULT_ENCODING
        self.language = DEFAULT_LANGUAGE
        self._audio_started = False
        self._resampler: soxr.ResampleStream | None = None
        self._vad = models.models.vad.stream()
        self._turns = TurnDetector(settings.turn)
        self._buffer = AudioBuffer()
        self._windows = 0  # VAD windows seen
        self._turn = 0  # turns started
        self._turn_start = 0  # first sample of the current turn's audio (onset minus pre-roll)
        self._next_partial = 0
        self._last_partial = ""
        self._partial: Job | None = None
        self._verdict: Job | None = None
        self._prepared: dict[int, Job] = {}  # pause -> the final transcribed at that pause
        self._out: asyncio.Queue[dict[str, Any] | Awaitable[dict[str, Any] | None] | None] = asyncio.Queue()
        self._awaiting = False  # the send loop waits for a final being transcribed
        self._tasks: set[asyncio.Task] = set()
        self._keep = round((settings.preroll_secs + settings.turn.start_secs) * MODEL_RATE) + 2 * WINDOW
        self._partial_step = round(settings.partial_interval_secs * MODEL_RATE)

    @property
    def mid_turn(self) -> bool:
        """A turn is under way or its final has not been sent yet (what a drain waits for)."""
        return self._turns.state is not State.IDLE or self._awaiting or not self._out.empty()

    # -- the socket ---------------------------------------------------------------------------------

    async def handle(self, text: str) -> None:
        """A ``config`` or ``flush`` message."""
        self._text(text)

    async def handle_bytes(self, data: bytes) -> None:
        """An audio frame."""
        await self._audio(data)

    async def refuse(self, error: ProtocolError) -> None:
        """Refusals take their place in the event order."""
        self._send(error.reply())

    async def work(self) -> None:
        """Send the events in order, each final once it is transcribed."""
        await self._send_loop()

    def cancel_all(self) -> None:
        """The client has gone: cancel the jobs and tasks in flight."""
        self._close()

    async def closed(self) -> None:
        """Wait for the cancelled tasks; close the finals never sent (their coroutines are not leaked)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while not self._out.empty():
            if asyncio.iscoroutine(item := self._out.get_nowait()):
                item.close()

    def _close(self) -> None:
        for job in [self._partial, self._verdict, *self._prepared.values()]:
            if job is not None:
                job.future.cancel()
        for task in self._tasks:
            task.cancel()

    def _send(self, message: dict[str, Any] | Awaitable[dict[str, Any] | None]) -> None:
        self._out.put_nowait(message)

    async def _send_loop(self) -> None:
        while True:
            item = await self._out.get()
            self._awaiting = not isinstance(item, dict)
            message = item if isinstance(item, dict) else await item  # type: ignore[misc]
            if message is not None:
                await self.ws.send_json(message)
            self._awaiting = False  # sent: a drain may now close the socket

    def _spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- client messages ----------------------------------------------------------------------------

    def _text(self, raw: str) -> None:
        message = parse_text(raw)
        if isinstance(message, ConfigMessage):
            self._configure(message)
        else:  # flush
            self._handle(self._turns.flush())

    def _configure(self, config: ConfigMessage) -> None:
        if self._audio_started:
            raise AsrError(
                "config_after_audio",
                f"config must come before the first audio frame; the stream goes on as {self._describe()}",
            )
        if config.language not in self.models.models.languages:
            supported = self.models.models.languages
            listed = ", ".join(supported[:12]) + (" ..." if len(supported) > 12 else "")
            raise AsrError("unsupported_language", f"language {config.language!r}: the model speaks {listed}")
        self.sample_rate, self.encoding, self.language = config.sample_rate, config.encoding, config.language
        self._resampler = (
            soxr.ResampleStream(self.sample_rate, MODEL_RATE, 1, dtype="float32", quality="HQ")
            if self.sample_rate != MODEL_RATE
            else None
        )
        logger.debug("stream config: {}", self._describe())

    def _describe(self) -> str:
        return f"{self.encoding} at {self.sample_rate} Hz, language {self.language}"

    async def _audio(self, data: bytes) -> None:
        if len(data) > MAX_AUDIO_FRAME_BYTES:
            raise AsrError("too_large", f"audio frame of {len(data)} bytes: the limit is {MAX_AUDIO_FRAME_BYTES}")
        dtype, width = ENCODINGS[self.encoding]
        if len(data) % width:
            raise AsrError(
                "bad_audio", f"{len(data)} bytes is not a whole number of {width}-byte {self.encoding} samples"
            )
        samples = np.frombuffer(data, dtype=dtype)
        if width == 2:
            samples = samples.astype(np.float32) / 32768.0
        else:
            if not np.isfinite(samples).all():
                raise AsrError("bad_audio", "pcm_f32le frame with NaN or infinite samples")
            samples = np.clip(samples, -1.0, 1.0).astype(np.float32)
        self._audio_started = True
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        if not len(samples):
            return
        self._buffer.append(samples)
        if len(samples) > BIG_FRAME_SAMPLES:  # seconds of audio at once: its VAD must not stall other streams
            probabilities = await asyncio.to_thread(self._vad.feed, samples)
        else:
            probabilities = self._vad.feed(samples)
        for probability in probabilities:
            self._handle(self._turns.window(self._windows, float(probability)))
            self._windows += 1
        if self._turns.state is State.IDLE:
            self._buffer.forget_before(self._buffer.end - self._keep)
        elif self._turns.state is State.SPEAKING and self._partial_step and self._buffer.end >= self._next_partial:
            self._request_partial()

    # -- turn events --------------------------------------------------------------------------------

    def _handle(self, events: list) -> None:
        for event in events:
            if isinstance(event, SpeechStarted):
                self._turn += 1
                self._turn_start = max(self._buffer.start, event.onset - round(self.settings.preroll_secs * MODEL_RATE))
                self._next_partial = event.onset + self._partial_step
                self._last_partial = ""
                self._send({"type": "speech_start", "timestamp": _seconds(event.onset)})
            elif isinstance(event, Paused):
                audio = self._buffer.between(self._turn_start, self._buffer.end)
                self._verdict = self.models.submit(Job("verdict", audio))
                self._spawn(self._await_verdict(event.pause, self._verdict))
                # The final's audio is already all here: transcribe it while Smart Turn judges (not for
                # turns past one window: the long-form path is too dear to run at every pause).
                if len(audio) <= LONGEST_WINDOW_SAMPLES:
                    job = Job("final", audio, self.language)
                    self._prepared[event.pause] = self.models.submit(job, prepared=True)
            elif isinstance(event, Resumed):
                self._drop_verdict()
                if (job := self._prepared.pop(event.pause, None)) is not None:
                    job.future.cancel()
            elif isinstance(event, TurnEnded):
                self._end_turn(event)

    def _drop_verdict(self) -> None:
        """The verdict asked at the last pause is moot (speech resumed, or the turn ended without it)."""
        if self._verdict is not None:
            self._verdict.future.cancel()  # only stops it if it has not started
            self._verdict = None

    async def _await_verdict(self, pause: int, job: Job) -> None:
        try:
            probability = await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            return
        except Exception as e:
            self._send(AsrError("engine_error", f"Smart Turn failed: {type(e).__name__}: {e}").reply())
            return
        self._handle(self._turns.verdict(pause, probability))

    def _end_turn(self, event: TurnEnded) -> None:
        self._drop_verdict()
        if self._partial is not None:
            self._partial.future.cancel()
            self._partial = None
        for pause in [p for p in self._prepared if p != event.pause]:
            self._prepared.pop(pause).future.cancel()
        job = self._prepared.pop(event.pause, None)
        if job is None:  # flushed while speaking, or a long turn: nothing prepared
            audio = self._buffer.between(self._turn_start, self._buffer.end)
            job = self.models.submit(Job("final", audio, self.language))
        else:
            self.models.promote(job)
        self._send({"type": "speech_end", "timestamp": _seconds(event.speech_end)})
        self._send(self._final(job, self._turn_start, event))
        self._buffer.forget_before(self._buffer.end - self._keep)

    async def _final(self, job: Job, offset: int, event: TurnEnded) -> dict[str, Any]:
        try:
            transcript: Transcript = await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            return AsrError("engine_error", f"transcription failed: {type(e).__name__}: {e}").reply()
        base = offset / MODEL_RATE
        # Whisper's alignment stretches the first word back over the pre-roll's silence; the VAD knows
        # better when the speech began (give or take a window).
        floor = event.onset / MODEL_RATE - ONSET_MARGIN_SECS
        words = []
        for w in transcript.words:
            start, end = base + w.start, base + w.end
            start = min(max(start, floor), end)
            words.append({"word": w.word, "start": round(start, 3), "end": round(end, 3), "confidence": w.confidence})
        start, end = _seconds(event.onset), _seconds(event.speech_end)
        if words:  # the turn's span covers its words (the VAD's onset can be a little late)
            start, end = min(start, words[0]["start"]), max(end, words[-1]["end"])
        return {
            "type": "final",
            "text": transcript.text,
            "start": start,
            "end": end,
            "words": words,
            "confidence": round(transcript.confidence, 3),
            "reason": event.reason,
        }

    # -- partials -----------------------------------------------------------------------------------

    def _request_partial(self) -> None:
        end = self._buffer.end
        self._next_partial = end + self._partial_step
        # Partials of a turn longer than one Whisper window cover its last window only.
        audio = self._buffer.between(max(self._turn_start, end - LONGEST_WINDOW_SAMPLES), end)
        if self._partial is not None and self.models.replace_audio(self._partial, audio, end):
            return  # the waiting partial now covers the newer audio
        self._partial = self.models.submit(Job("partial", audio, self.language, end))
        self._spawn(self._await_partial(self._partial, self._turn))

    async def _await_partial(self, job: Job, turn: int) -> None:
        try:
            transcript: Transcript = await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            return
        except Exception as e:
            self._send(AsrError("engine_error", f"partial transcription failed: {type(e).__name__}: {e}").reply())
            return
        if self._partial is job:
            self._partial = None
        # Partials belong to a turn still under way: once it ended, its final says it all.
        if turn != self._turn or self._turns.state is State.IDLE:
            return
        if not transcript.text or transcript.text == self._last_partial:
            return
        self._last_partial = transcript.text
        self._send(
            {
                "type": "partial",
                "text": transcript.text,
                "confidence": round(transcript.confidence, 3),
                "timestamp": _seconds(job.end),
            }
        )
