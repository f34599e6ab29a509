"""A worker TTS's replies measured as they arrive: for the fleet's tests, bench/fleet.py and fleet_soak.py."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from vivavoce.worker_directory import Selector

SENTENCES = [
    "Good morning, and thank you for calling the library.",
    "Your books are due back on the fourteenth of next month.",
    "You can renew them twice online or by phone.",
    "Is there anything else I can help you with today?",
]


class Heard(FrameProcessor):
    """Records the TTS's audio (seconds of it, when it came, which worker spoke it) and tells when the reply
    ended; :meth:`longest_silence_secs` is the longest silence a listener would hear inside the reply."""

    def __init__(self, on_first_audio):
        super().__init__()
        self.audio_secs = 0.0
        self.arrivals: list[float] = []
        self.chunks: list[tuple[float, float, str | None]] = []  # (arrival, seconds of audio, worker)
        self.errors: list[str] = []
        self.ended = asyncio.Event()
        self._on_first_audio = on_first_audio

    def begin(self, on_first_audio: Callable[[], None]) -> None:
        """Forget what was heard: a new reply starts."""
        self.audio_secs, self.arrivals, self.chunks, self.errors = 0.0, [], [], []
        self.ended = asyncio.Event()
        self._on_first_audio = on_first_audio

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            if not self.arrivals:
                self._on_first_audio()
            secs = len(frame.audio) / 2 / frame.sample_rate
            self.arrivals.append(time.monotonic())
            self.chunks.append((self.arrivals[-1], secs, frame.metadata.get("worker")))
            self.audio_secs += secs
        elif isinstance(frame, TTSStoppedFrame):
            self.ended.set()
        elif isinstance(frame, ErrorFrame):
            self.errors.append(frame.error)
        await self.push_frame(frame, direction)


def waits_secs(chunks: list[tuple[float, float, str | None]]) -> list[float]:
    """The silence before each chunk after the first, the reply played in real time from its first chunk,
    each chunk as soon as it has arrived and the one before it has played (0: it was there in time)."""
    if not chunks:
        return []
    clock, waits = chunks[0][0], []
    for arrival, secs, _worker in chunks:
        start = max(clock, arrival)
        waits.append(start - clock)
        clock = start + secs
    return waits[1:]


def longest_silence_secs(chunks: list[tuple[float, float, str | None]]) -> float:
    """The longest silence inside a reply played in real time (see :func:`waits_secs`)."""
    return max(waits_secs(chunks), default=0.0)


@dataclass
class Reply:
    """One reply as a caller heard it."""

    chunks: list[tuple[float, float, str | None]]  # (arrival, seconds of audio, worker)
    audio_secs: float
    finished: bool  # its end arrived (TTSStoppedFrame) before the deadline
    sentences_lost: int  # sentences of which no worker finished the text or its unspoken rest
    sent_at: float

    @property
    def workers(self) -> set[str]:
        """The workers that spoke it."""
        return {worker for _, _, worker in self.chunks if worker}


@functools.cache  # one subclass per service class, not one per call (the soak measures memory)
def _recording(service: type) -> type:
    """``service`` recording the text of every request a worker finished (``done``)."""

    class Recording(service):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.done_texts: list[str] = []

        async def on_request_done(self, request_id: str, text: str, message: dict) -> None:
            await super().on_request_done(request_id, text, message)
            self.done_texts.append(text.strip())

    return Recording


def sentences_lost(sentences: list[str], done_texts: list[str]) -> int:
    """Sentences of which no worker finished the text, nor the rest a failover sent again."""
    return sum(not any(d and s.strip().endswith(d) for d in done_texts) for s in sentences)


class Conversation:
    """One call's TTS, kept open across replies: a worker TTS ``service`` routed by ``registry`` and
    ``selector`` in a running pipeline. ``connects`` lists (when, worker URL) of every socket it opened."""

    def __init__(self, service: type, registry: str, selector: Selector, *, reply_secs: float = 30.0, **options: Any):
        """Build the pipeline; ``async with`` runs it, :meth:`say` speaks a reply. ``options`` go to the service;
        where the selector names a voice (Piper), it is the service's, which speaks whole sentences (so that
        :func:`sentences_lost` can count them)."""
        if selector.voice:
            options = {"voice": selector.voice, "first_phrase_words": 0, **options}
        self.tts = _recording(service)(registry=registry, selector=selector, **options)
        self.heard = Heard(lambda: None)
        self.connects: list[tuple[float, str]] = []
        self.reply_secs = reply_secs
        self._ready = asyncio.Event()
        self._worker = PipelineWorker(
            Pipeline([self.tts, self.heard]), params=PipelineParams(audio_out_sample_rate=16000)
        )
        self._runner = WorkerRunner(handle_sigint=False)
        self._task: asyncio.Task | None = None

        @self.tts.event_handler("on_connected")
        async def connected(_service) -> None:
            self.connects.append((time.monotonic(), self.tts.worker_url))
            self._ready.set()

        @self.tts.event_handler("on_connection_error")
        async def failed(_service, _error) -> None:
            self._ready.set()  # say() tries again

    async def __aenter__(self) -> Conversation:
        await self._runner.add_workers(self._worker)
        self._task = asyncio.create_task(self._runner.run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 10)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._worker.queue_frame(EndFrame())
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 10)
        except TimeoutError:  # a pipeline stuck on a dead socket: cancel it
            await self._runner.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def say(self, sentences: list[str] = SENTENCES, on_first_audio: Callable[[], None] = lambda: None) -> Reply:
        """Speak a reply, as an LLM streams it; returns once it ended (or ``reply_secs`` passed)."""
        self.heard.begin(on_first_audio)
        done_before = len(self.tts.done_texts)
        sent_at = time.monotonic()
        await self._worker.queue_frames(
            [LLMFullResponseStartFrame(), *(LLMTextFrame(s + " ") for s in sentences), LLMFullResponseEndFrame()]
        )
        try:
            await asyncio.wait_for(self.heard.ended.wait(), self.reply_secs)
        except TimeoutError:
            pass
        heard = self.heard
        return Reply(
            chunks=list(heard.chunks),
            audio_secs=heard.audio_secs,
            finished=heard.ended.is_set(),
            sentences_lost=sentences_lost(sentences, self.tts.done_texts[done_before:]),
            sent_at=sent_at,
        )


async def speak_reply(
    service: type,
    registry: str,
    selector: Selector,
    on_first_audio: Callable[[str], None] = lambda _url: None,
    sentences: list[str] = SENTENCES,
) -> tuple[Heard, str]:
    """A reply (four sentences by default), as an LLM streams it, through a worker TTS ``service`` class routed by
    ``registry`` and ``selector``; returns what came out and the worker that spoke first.
    ``on_first_audio(url)`` runs when the first audio arrives (e.g. to kill that worker)."""
    first: list[str] = []
    async with Conversation(service, registry, selector) as call:
        await asyncio.sleep(0.5)

        def first_audio() -> None:
            first.append(call.tts.worker_url)
            on_first_audio(call.tts.worker_url)

        reply = await call.say(sentences, first_audio)
        if not reply.finished:
            raise TimeoutError(f"the reply did not end within {call.reply_secs:g} s")
    return call.heard, first[0]
