"""Real workers in a fleet: Piper workers registering in a real redis-server, refusing when full, draining on
SIGTERM, and the agent's TTS failing over to another worker when the one speaking is killed (kill -9)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator

import pytest
import websockets
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
from websockets.exceptions import ConnectionClosed

from vivavoce.processors.piper_worker import PiperWorkerTTSService
from vivavoce.testing.redis_server import RedisServer
from vivavoce.worker_directory import Selector, WorkerDirectory
from worker_support import start_piper

JOE = Selector(family="piper", voice="en_US-joe-medium")
LONG = " ".join(["The quick brown fox jumps over the lazy dog, and then it runs far away into the woods."] * 6)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer().running() as server:
        yield server


async def entries_when(directory: WorkerDirectory, check, secs: float = 5.0):
    """The registry's Piper workers once ``check(entries)`` holds (the last read if it never does)."""
    deadline = time.monotonic() + secs
    while True:
        entries = await directory.workers(JOE)
        if check(entries) or time.monotonic() > deadline:
            return entries
        await asyncio.sleep(0.1)


async def refused_code(url: str) -> int | None:
    """The close code a new session gets at once (None: it was admitted)."""
    async with websockets.connect(url) as ws:
        try:
            await asyncio.wait_for(ws.recv(), 2.0)
        except ConnectionClosed as e:
            return e.rcvd.code if e.rcvd else None
        except TimeoutError:
            return None
    return None


@pytest.mark.e2e
async def test_a_worker_registers_once_ready_refuses_when_full_and_leaves_on_exit(redis_server, tmp_path):
    http, worker = start_piper(tmp_path / "w.log", "--registry", redis_server.url, "--max-sessions", "1", auth=False)
    ws_url = http.replace("http://", "ws://") + "/v1/stream"
    directory = WorkerDirectory(redis_server.url)
    try:
        with worker:
            [entry] = await entries_when(directory, lambda e: len(e) == 1)
            assert (entry.url, entry.max_sessions, entry.state, entry.active_sessions) == (ws_url, 1, "ready", 0)
            assert "en_US-joe-medium" in entry.voices
            async with websockets.connect(ws_url):
                [entry] = await entries_when(directory, lambda e: e and e[0].active_sessions == 1)
                assert entry.active_sessions == 1 and not entry.has_room
                assert await directory.pick(JOE) is None  # the agent does not pick a full worker...
                assert await refused_code(ws_url) == 1013  # ...and one that tries anyway is refused
            assert await refused_code(ws_url) is None  # room again
        assert await directory.workers(JOE) == []  # it removed itself on exit
    finally:
        await directory.close()


@pytest.mark.e2e
async def test_sigterm_drains_refuses_new_sessions_finishes_the_utterance_then_exits(redis_server, tmp_path):
    http, worker = start_piper(tmp_path / "w.log", "--registry", redis_server.url, "--drain-secs", "30", auth=False)
    ws_url = http.replace("http://", "ws://") + "/v1/stream"
    directory = WorkerDirectory(redis_server.url)
    try:
        with worker as process:
            await entries_when(directory, lambda e: len(e) == 1)
            async with websockets.connect(ws_url) as ws:
                await ws.send(json.dumps({"type": "synthesize", "id": "long", "text": LONG}))
                assert json.loads(await ws.recv())["type"] == "start"
                process.send_signal(signal.SIGTERM)
                [entry] = await entries_when(directory, lambda e: e and e[0].state == "draining", secs=3)
                assert entry.state == "draining"
                assert await refused_code(ws_url) == 1013
                audio_bytes, done = 0, None
                async for message in ws:
                    if isinstance(message, bytes):
                        audio_bytes += len(message)
                    elif json.loads(message)["type"] == "done":
                        done = json.loads(message)
                        break
                assert done is not None and not done["cancelled"], done
                assert done["audio_ms"] > 10_000 and audio_bytes > 0  # the whole utterance, not cut
            assert await asyncio.to_thread(process.wait, 20) == 0
        assert await directory.workers(JOE) == []
    finally:
        await directory.close()


SENTENCES = [
    "Good morning, and thank you for calling the library.",
    "Your books are due back on the fourteenth of next month.",
    "You can renew them twice online or by phone.",
    "Is there anything else I can help you with today?",
]


class Heard(FrameProcessor):
    """Records the TTS's audio (seconds of it, and when it came) and tells when the reply ended."""

    def __init__(self, on_first_audio):
        super().__init__()
        self.audio_secs = 0.0
        self.arrivals: list[float] = []
        self.errors: list[str] = []
        self.ended = asyncio.Event()
        self._on_first_audio = on_first_audio

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            if not self.arrivals:
                self._on_first_audio()
            self.arrivals.append(time.monotonic())
            self.audio_secs += len(frame.audio) / 2 / frame.sample_rate
        elif isinstance(frame, TTSStoppedFrame):
            self.ended.set()
        elif isinstance(frame, ErrorFrame):
            self.errors.append(frame.error)
        await self.push_frame(frame, direction)


async def speak_through_the_fleet(registry: str, on_first_audio=lambda _url: None) -> tuple[Heard, str]:
    """Four sentences through PiperWorkerTTSService picking from ``registry``; (what came out, the first worker)."""
    tts = PiperWorkerTTSService(registry=registry, selector=JOE, voice="en_US-joe-medium", first_phrase_words=0)
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


@pytest.mark.e2e
async def test_a_worker_killed_mid_reply_the_rest_is_spoken_by_another(redis_server, tmp_path):
    a_http, a = start_piper(tmp_path / "a.log", "--registry", redis_server.url, auth=False)
    b_http, b = start_piper(tmp_path / "b.log", "--registry", redis_server.url, auth=False)
    directory = WorkerDirectory(redis_server.url)
    try:
        with a as a_process, b as b_process:
            await entries_when(directory, lambda e: len(e) == 2)
            reference, _ = await speak_through_the_fleet(redis_server.url)
            processes = {a_http.replace("http://", "ws://"): a_process, b_http.replace("http://", "ws://"): b_process}
            killed: list[float] = []

            def kill(url: str) -> None:
                processes[url.removesuffix("/v1/stream")].send_signal(signal.SIGKILL)
                killed.append(time.monotonic())

            heard, first = await speak_through_the_fleet(redis_server.url, on_first_audio=kill)
            assert processes[first.removesuffix("/v1/stream")].wait(5) == -signal.SIGKILL
            after = [t for t in heard.arrivals if t > killed[0]]
            assert after, "no audio came after the worker was killed"
            # Everything was said: what the dead worker had not sent came from the other one.
            assert heard.audio_secs >= 0.9 * reference.audio_secs, (heard.audio_secs, reference.audio_secs)
            assert heard.audio_secs <= 1.5 * reference.audio_secs  # at most a sentence said twice
    finally:
        await directory.close()
