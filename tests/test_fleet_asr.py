"""ASR services in a fleet: real ASR service processes registering in a real redis-server, the agent's
``AsrServiceSTTService`` routed among them, and the utterance in flight transcribed in full by another
service when the one hearing it is killed (kill -9) or drained (SIGTERM)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest
import websockets
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner
from websockets.exceptions import ConnectionClosed

from vivavoce.frames import WorkerFailoverFrame
from vivavoce.processors.asr_service import AsrServiceSTTService
from vivavoce.testing.conversation_eval import normalise_words, word_errors
from vivavoce.testing.real_speech import RATE, utterances
from vivavoce.testing.redis_server import RedisServer
from vivavoce.worker_directory import Selector, WorkerDirectory
from worker_support import eventually, start_asr

pytestmark = pytest.mark.e2e
ASR = Selector(family="asr")
CHUNK = RATE // 50  # 20 ms, as a transport delivers it


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer().running() as server:
        yield server


def long_utterance():
    """A real utterance of 3-6 s (time to kill its service in the middle)."""
    return next(u for u in utterances() if 3.0 <= u.seconds <= 6.0 and len(u.text.split()) >= 8)


class Transcripts(FrameProcessor):
    """Collects the finals; ``on_partial()`` runs at the next partial."""

    def __init__(self) -> None:
        super().__init__()
        self.finals: list[str] = []
        self.failovers: list[WorkerFailoverFrame] = []
        self.arrived = asyncio.Event()
        self.on_partial = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InterimTranscriptionFrame) and self.on_partial:
            self.on_partial()
            self.on_partial = None
        elif isinstance(frame, WorkerFailoverFrame):
            self.failovers.append(frame)
        elif isinstance(frame, TranscriptionFrame):
            self.finals.append(frame.text)
            self.arrived.set()
        await self.push_frame(frame, direction)


class Listener:
    """One call's STT on the fleet: an ``AsrServiceSTTService`` routed by the registry, in a running pipeline
    that the test feeds real speech in real time, with the VAD frames the agent's VAD would push."""

    def __init__(self, registry: str):
        self.stt = AsrServiceSTTService(registry=registry)
        self.transcripts = Transcripts()
        self.connects: list[str] = []
        self._worker = PipelineWorker(
            Pipeline([self.stt, self.transcripts]), params=PipelineParams(audio_in_sample_rate=RATE)
        )
        self._runner = WorkerRunner(handle_sigint=False)
        self._task: asyncio.Task | None = None
        self._connected = asyncio.Event()

        @self.stt.event_handler("on_connected")
        async def connected(_service) -> None:
            self.connects.append(self.stt.worker_url)
            self._connected.set()

    async def __aenter__(self) -> Listener:
        await self._runner.add_workers(self._worker)
        self._task = asyncio.create_task(self._runner.run())
        await asyncio.wait_for(self._connected.wait(), 20)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._worker.queue_frame(EndFrame())
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 15)
        except TimeoutError:
            await self._runner.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def say(
        self, pcm: np.ndarray, *, at_secs: float | None = None, then=None, on_partial=None, silence_secs: float = 0.5
    ) -> str:
        """Stream ``pcm`` (16 kHz int16) in real time between the VAD's start and stop, calling ``then()`` once
        ``at_secs`` of it were sent (None: never) and ``on_partial()`` at its first partial transcript, and
        return the final it brings."""
        self.transcripts.arrived.clear()
        self.transcripts.on_partial = on_partial
        before = len(self.transcripts.finals)
        lead = np.zeros(int(0.3 * RATE), dtype=np.int16)
        tail = np.zeros(int(silence_secs * RATE), dtype=np.int16)
        audio = np.concatenate([lead, pcm, tail])
        started = time.monotonic()
        for n, start in enumerate(range(0, len(audio), CHUNK)):
            if start == len(lead):
                await self._worker.queue_frame(VADUserStartedSpeakingFrame())
            if at_secs is not None and then is not None and start >= len(lead) + at_secs * RATE:
                then()
                then = None
            await self._worker.queue_frame(
                InputAudioRawFrame(audio=audio[start : start + CHUNK].tobytes(), sample_rate=RATE, num_channels=1)
            )
            await asyncio.sleep(max(0.0, started + (n + 1) * CHUNK / RATE - time.monotonic()))
        await self._worker.queue_frame(VADUserStoppedSpeakingFrame())
        deadline = time.monotonic() + 20
        while len(self.transcripts.finals) == before and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.transcripts.arrived.wait(), 0.5)
        return " ".join(self.transcripts.finals[before:])


def wer(reference: str, heard: str) -> float:
    errors, words = word_errors(reference, heard)
    return errors / max(1, words)


def entries_when(directory: WorkerDirectory, check, secs: float = 10.0):
    """The registry's ASR services once ``check(entries)`` holds (the last read if it never does)."""
    return eventually(lambda: directory.workers(ASR), check, secs)


async def refusal(url: str, *, after_secs: float) -> tuple[int | None, str | None]:
    """The close code and error code a new stream to ``url`` gets ``after_secs`` from now."""
    await asyncio.sleep(after_secs)
    async with websockets.connect(url) as ws:
        try:
            message = json.loads(await asyncio.wait_for(ws.recv(), 3.0))
            await asyncio.wait_for(ws.recv(), 3.0)
        except ConnectionClosed as e:
            return (e.rcvd.code if e.rcvd else None), message.get("code")
    return None, None


async def test_an_asr_service_registers_and_a_killed_one_loses_none_of_the_utterance(redis_server, tmp_path):
    utterance = long_utterance()
    a_http, a = start_asr(tmp_path / "a.log", "--registry", redis_server.url, auth=False)
    b_http, b = start_asr(tmp_path / "b.log", "--registry", redis_server.url, auth=False)
    directory = WorkerDirectory(redis_server.url)
    try:
        with a as a_process, b as b_process:
            entries = await entries_when(directory, lambda e: len(e) == 2)
            assert len(entries) == 2, entries
            for entry in entries:
                assert entry.url.endswith("/v1/asr") and entry.state == "ready" and entry.models == ("tiny.en",)
            processes = {a_http.replace("http://", "ws://") + "/v1/asr": a_process}
            processes[b_http.replace("http://", "ws://") + "/v1/asr"] = b_process
            async with Listener(redis_server.url) as call:
                first = call.connects[0]
                # Half-way through the utterance, the service hearing it dies without a word.
                heard = await call.say(
                    utterance.pcm, at_secs=utterance.seconds / 2, then=lambda: processes[first].send_signal(9)
                )
                assert processes[first].wait(5) == -signal.SIGKILL
                assert call.connects[-1] != first, call.connects
                # Reported, for the report and the metrics: whole, not degraded.
                [failover] = call.transcripts.failovers
                assert (failover.service, failover.from_url, failover.to_url) == ("stt", first, call.connects[-1])
                assert not failover.degraded
                # The whole utterance was transcribed by the other service: its start too, which only the dead
                # one had heard when it died.
                assert wer(utterance.text, heard) <= 0.35, (utterance.text, heard)
                assert normalise_words(heard)[:2] == normalise_words(utterance.text)[:2], (utterance.text, heard)
                # The call goes on with the new service.
                again = await call.say(utterance.pcm)
                assert wer(utterance.text, again) <= 0.35, (utterance.text, again)
    finally:
        await directory.close()


async def test_a_draining_asr_service_finishes_the_utterance_refuses_new_streams_then_exits(redis_server, tmp_path):
    utterance = long_utterance()
    a_http, a = start_asr(tmp_path / "a.log", "--registry", redis_server.url, "--drain-secs", "20", auth=False)
    b_http, b = start_asr(tmp_path / "b.log", "--registry", redis_server.url, auth=False)
    directory = WorkerDirectory(redis_server.url)
    try:
        with a as a_process, b as b_process:
            await entries_when(directory, lambda e: len(e) == 2)
            processes = {a_http.replace("http://", "ws://") + "/v1/asr": a_process}
            processes[b_http.replace("http://", "ws://") + "/v1/asr"] = b_process
            async with Listener(redis_server.url) as call:
                first = call.connects[0]
                refused: list[asyncio.Task] = []

                def drain() -> None:
                    processes[first].send_signal(signal.SIGTERM)
                    refused.append(asyncio.create_task(refusal(first, after_secs=0.3)))

                # Drained in the middle of an utterance it is transcribing (it has sent a partial).
                heard = await call.say(utterance.pcm, on_partial=drain)
                # While it finished this utterance, it refused a new stream: 1013, saying why.
                assert await refused[0] == (1013, "draining")
                assert wer(utterance.text, heard) <= 0.35, (utterance.text, heard)
                entries = await entries_when(directory, lambda e: all(x.url != first for x in e))
                assert all(x.url != first for x in entries), entries  # gone from the registry
                assert processes[first].wait(25) == 0  # a clean exit once drained
                again = await call.say(utterance.pcm)
                assert wer(utterance.text, again) <= 0.35, (utterance.text, again)
                assert call.connects[-1] != first, call.connects
    finally:
        await directory.close()
