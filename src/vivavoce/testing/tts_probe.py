"""A worker TTS's reply measured as it arrives: for failover tests and bench/fleet.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

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


def longest_silence_secs(chunks: list[tuple[float, float, str | None]]) -> float:
    """The longest silence inside a reply played in real time from its first chunk, each chunk as soon as it
    has arrived and the one before it has played."""
    if not chunks:
        return 0.0
    clock, longest = chunks[0][0], 0.0
    for arrival, secs, _worker in chunks:
        start = max(clock, arrival)
        longest = max(longest, start - clock)
        clock = start + secs
    return longest


async def speak_reply(
    service: type, registry: str, selector: Selector, on_first_audio: Callable[[str], None] = lambda _url: None
) -> tuple[Heard, str]:
    """A four-sentence reply, as an LLM streams it, through a worker TTS ``service`` class routed by
    ``registry`` and ``selector``; returns what came out and the worker that spoke first.
    ``on_first_audio(url)`` runs when the first audio arrives (e.g. to kill that worker)."""
    tts = service(registry=registry, selector=selector, voice=selector.voice, first_phrase_words=0)
    first: list[str] = []

    def first_audio() -> None:
        first.append(tts._url)
        on_first_audio(tts._url)

    heard = Heard(first_audio)
    worker = PipelineWorker(Pipeline([tts, heard]), params=PipelineParams(audio_out_sample_rate=16000))

    async def feed() -> None:
        await asyncio.sleep(0.5)
        await worker.queue_frames(
            [LLMFullResponseStartFrame(), *(LLMTextFrame(s + " ") for s in SENTENCES), LLMFullResponseEndFrame()]
        )
        await asyncio.wait_for(heard.ended.wait(), 60)
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), feed())
    return heard, first[0]
