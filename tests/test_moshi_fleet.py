"""Moshi in the fleet: tiny-Moshi workers registered in a real redis-server, the agent's ``moshi`` kind picking
one through ``registry:``, failing over when it is killed mid-call (degraded: the report and the metrics say
so), a full worker refusing at the handshake (1013) and a worker draining on SIGTERM.

The workers babble loudly whenever they may speak (random weights, no gating here), so whose audio the call
hears is easy to read from the output track.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from pipecat.frames.frames import (
    EndWorkerFrame,
    ErrorFrame,
    InputAudioRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import vivavoce.file_session
from moshi_support import AUDIO, FRAME, HANDSHAKE, REPO, Worker, make_tiny_checkpoint, moshi_worker, noise_audio, pcm16
from vivavoce.botfile import load_bot
from vivavoce.file_session import run_on_recording
from vivavoce.frames import WorkerFailoverFrame
from vivavoce.metrics import ServeMetrics
from vivavoce.session import Session
from vivavoce.testing.redis_server import RedisServer
from vivavoce.wav import InputAudio
from vivavoce.worker_directory import Selector, WorkerDirectory
from worker_support import eventually

sys.path.insert(0, str(REPO / "workers" / "common"))
import test_fleet_registry  # noqa: E402
from vivavoce_worker.registration import Registration  # noqa: E402

# The registry's fixtures: a redis-server for the module, an empty registry and a directory on it per test.
redis_server, directory = test_fleet_registry.redis_server, test_fleet_registry.directory

pytestmark = pytest.mark.e2e

MOSHI = Selector(family="moshi")
RATE = 16000
"""The recording's rate (the agent resamples to the workers' 24 kHz)."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-moshi"))


def fleet_worker(tiny: Path, redis_server: RedisServer, *args: str):
    """A tiny-Moshi worker registered in ``redis_server`` (greedy, no gating)."""
    return moshi_worker(tiny, "--greedy", "--no-gate", "--registry", redis_server.url, *args)


def registry_when(directory: WorkerDirectory, check):
    """The registry's Moshi workers once ``check(entries)`` holds."""
    return eventually(lambda: directory.workers(MOSHI), check)


async def health(worker: Worker) -> dict:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(f"http://127.0.0.1:{worker.port}/health")).json()


def health_when(worker: Worker, check):
    """The worker's ``/health`` once ``check(body)`` holds."""
    return eventually(lambda: health(worker), check)


async def serving_a_call(workers: list[Worker], secs: float = 60.0) -> Worker:
    """The worker that has a conversation, once one has."""
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        for worker in workers:
            if (await health(worker))["active_sessions"]:
                return worker
        await asyncio.sleep(0.1)
    raise AssertionError("no worker took the call")


def user_audio(secs: float) -> list:
    """Quiet noise in 20 ms frames at 24 kHz, paced in real time (for pipecat's ``run_test``)."""
    from pipecat.tests.utils import SleepFrame

    chunk = pcm16(noise_audio(0.02, seed=1, level=0.01))
    return [InputAudioRawFrame(chunk, 24000, 1) if i % 2 == 0 else SleepFrame(0.02) for i in range(int(secs * 100))]


def _rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


class Brackets(BaseObserver):
    """Counts the Moshi service's utterance brackets (every TTSStartedFrame must get its TTSStoppedFrame)."""

    def __init__(self):
        super().__init__()
        self.started = self.stopped = 0

    async def on_push_frame(self, data: FramePushed) -> None:
        if data.first_push and isinstance(data.frame, TTSStartedFrame):
            self.started += 1
        elif data.first_push and isinstance(data.frame, TTSStoppedFrame):
            self.stopped += 1


async def test_a_worker_killed_mid_call_hands_the_call_to_another_degraded(
    tmp_path, tiny, redis_server, directory, monkeypatch
):
    bot_file = (REPO / "bots" / "moshi_local.yaml").read_text().replace("kind: local", "kind: file")
    bot_file = bot_file.replace("gate: true", "gate: false")
    shipped_url = "url: ${MOSHI_WORKER_URL:-ws://localhost:8998/api/chat}"
    bot_file = bot_file.replace(shipped_url, f"registry: {redis_server.url}")
    (tmp_path / "moshi.yaml").write_text(bot_file)
    bot = load_bot(tmp_path / "moshi.yaml")
    # Quiet input (the user says nothing, so nothing mutes Moshi): the bot babbles for the whole call.
    audio = InputAudio(tmp_path / "quiet.wav", np.zeros(12 * RATE, dtype=np.int16), RATE, 1)

    # The session's recorder (the report's failovers) and a bracket counter, from the session the run makes.
    sessions: list[Session] = []
    brackets = Brackets()

    class ObservedSession(Session):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, observers=[brackets], **kwargs)
            sessions.append(self)

    monkeypatch.setattr(vivavoce.file_session, "Session", ObservedSession)
    with fleet_worker(tiny, redis_server) as a, fleet_worker(tiny, redis_server) as b:
        await registry_when(directory, lambda entries: len(entries) == 2)

        async def kill_the_one_speaking() -> Worker:
            speaking = await serving_a_call([a, b])
            await asyncio.sleep(3.0)  # mid-call: the bot has been babbling for a while
            speaking.process.send_signal(signal.SIGKILL)
            return speaking

        killer = asyncio.create_task(kill_the_one_speaking())
        result = await run_on_recording(bot, audio, max_tail_secs=1.0)
        killed = await killer
        other = b if killed is a else a
        other_health = await health_when(other, lambda body: body["requests"]["finished"])

    report = result.report()
    assert report["degraded"] is True
    [failover] = report["failovers"]
    assert failover["service"] == "moshi" and failover["degraded"] is True
    assert failover["from"] == killed.chat_url and failover["to"] == other.chat_url
    assert "closed" in failover["reason"]
    assert other_health["requests"]["finished"] == 1  # the rest of the call was the other worker's
    # The bot spoke before the kill and goes on after it, from the other worker.
    out, at, rate = result.output_pcm, failover["at_s"], result.output_sample_rate
    assert _rms(out[int(1.0 * rate) : int((at - 0.3) * rate)]) > 300
    assert _rms(out[int((at + 1.0) * rate) : int((at + 4.0) * rate)]) > 300
    # The utterance the lost worker was speaking was ended, not left open.
    assert brackets.started == brackets.stopped >= 2


async def test_a_hung_worker_is_left_once_it_owes_audio_past_the_deadline(tiny, redis_server, directory):
    from pipecat.tests.utils import run_test

    from vivavoce.processors.moshi import MoshiS2SService

    with fleet_worker(tiny, redis_server) as a, fleet_worker(tiny, redis_server) as b:
        await registry_when(directory, lambda entries: len(entries) == 2)

        async def hang_the_one_speaking() -> Worker:
            speaking = await serving_a_call([a, b])
            await asyncio.sleep(1.5)
            speaking.process.send_signal(signal.SIGSTOP)  # its socket stays open: only the silence tells
            return speaking

        hanger = asyncio.create_task(hang_the_one_speaking())
        service = MoshiS2SService(registry=redis_server.url, gate=False, audio_deadline_secs=1.0)
        try:
            down, up = await run_test(service, frames_to_send=user_audio(6.0))
        finally:
            hung = await hanger
            hung.process.send_signal(signal.SIGCONT)  # so that it can be stopped
    other = b if hung is a else a
    [failover] = [f for f in down if isinstance(f, WorkerFailoverFrame)]
    assert (failover.from_url, failover.to_url) == (hung.chat_url, other.chat_url)
    assert "no audio" in failover.reason and failover.degraded
    after = down[down.index(failover) :]
    assert any(isinstance(f, TTSAudioRawFrame) for f in after)  # the bot's audio resumed
    started = [f for f in down if isinstance(f, TTSStartedFrame)]
    assert len(started) == len([f for f in down if isinstance(f, TTSStoppedFrame)]) >= 2
    assert not [f for f in down if isinstance(f, EndWorkerFrame)]


async def test_a_full_worker_refuses_with_1013_and_the_agent_lands_on_another(tiny, redis_server, directory):
    from pipecat.tests.utils import run_test

    from vivavoce.processors.moshi import MoshiS2SService

    with fleet_worker(tiny, redis_server, "--max-sessions", "1") as full, fleet_worker(tiny, redis_server) as other:
        async with connect(full.chat_url + "?codec=pcm16") as first, connect(other.chat_url + "?codec=pcm16") as busy:
            assert await first.recv() == await busy.recv() == bytes([HANDSHAKE])
            # A second call on the full worker: refused at the handshake, before any audio.
            async with connect(full.chat_url + "?codec=pcm16") as second:
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        assert (await second.recv())[0] != AUDIO
            assert closed.value.rcvd.code == 1013 and "full" in closed.value.rcvd.reason
            await registry_when(directory, lambda es: sorted(e.active_sessions for e in es) == [1, 1])
            # An agent reading a registry entry a second old (the full worker, still shown free) picks it
            # first, as the less loaded; it refuses, and the agent lands on the other worker.
            stale = Registration(redis_server.url, family="moshi", url=full.chat_url, max_sessions=8,
                                 stats=lambda: {"active_sessions": 0})
            await stale.start()
            try:
                down, up = await run_test(MoshiS2SService(registry=redis_server.url, gate=False),
                                          frames_to_send=user_audio(2.0))
            finally:
                await stale.stop()
            served = await health_when(other, lambda body: body["requests"]["finished"])
            refused = (await health(full))["requests"]["refused"]
    assert not [f for f in up if isinstance(f, ErrorFrame)] and not [f for f in down if isinstance(f, EndWorkerFrame)]
    assert not [f for f in down if isinstance(f, WorkerFailoverFrame)]  # a refusal at connect is no failover
    assert any(isinstance(f, TTSAudioRawFrame) for f in down)
    assert served["requests"]["finished"] == 1 and refused == 2  # the agent's call: refused by one, served by the other


async def test_sigterm_drains_the_conversations_then_leaves_the_registry(tiny, redis_server, directory):
    with fleet_worker(tiny, redis_server, "--drain-secs", "3") as worker:
        [entry] = await registry_when(directory, lambda entries: len(entries) == 1)
        assert entry.url == worker.chat_url and entry.max_sessions == 4 and entry.state == "ready"
        async with connect(worker.chat_url + "?codec=pcm16&gate=off") as call:
            assert await call.recv() == bytes([HANDSHAKE])
            frame = bytes([AUDIO]) + pcm16(noise_audio(FRAME / 24000, seed=2))
            worker.process.send_signal(signal.SIGTERM)
            [entry] = await registry_when(directory, lambda entries: [e.state for e in entries] == ["draining"])
            assert entry.state == "draining"
            # New conversations are refused at the handshake...
            async with connect(worker.chat_url + "?codec=pcm16") as late:
                with pytest.raises(ConnectionClosed) as closed:
                    await late.recv()
                    await late.recv()
            assert closed.value.rcvd.code == 1013 and "draining" in closed.value.rcvd.reason
            # ...while the one in progress goes on, until --drain-secs have passed.
            replies = 0
            await call.send(frame)  # the first frame gets no answer (Moshi's acoustic delay)
            with pytest.raises(ConnectionClosed):
                while True:
                    await call.send(frame)
                    message = await asyncio.wait_for(call.recv(), 10)
                    replies += message[0] == AUDIO
                    await asyncio.sleep(0.08)
        assert replies >= 5
        assert await asyncio.to_thread(worker.process.wait, 30) == 0
        assert await registry_when(directory, lambda entries: not entries) == []


async def test_the_recorder_reports_failovers_and_hands_them_to_the_metrics_with_a_turn():
    from pipecat.frames.frames import VADUserStartedSpeakingFrame
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

    from vivavoce.turns import TurnRecorder

    turns = []
    recorder = TurnRecorder(timeline=lambda ns: ns / 1e9, on_turn=turns.append)
    source, sink = FrameProcessor(name="moshi"), FrameProcessor(name="sink")

    async def push(at: float, frame) -> None:
        await recorder.on_push_frame(FramePushed(
            source=source, destination=sink, frame=frame, direction=FrameDirection.DOWNSTREAM,
            timestamp=round(at * 1e9), first_push=True,
        ))

    # One before any turn (it goes with the first), one lossless (a TTS re-sent its sentence).
    await push(1.5, WorkerFailoverFrame(service="moshi", from_url="ws://a/api/chat", to_url="ws://b/api/chat",
                                        reason="the socket closed", degraded=True))
    await push(2.0, VADUserStartedSpeakingFrame(start_secs=0.2))
    await push(3.0, WorkerFailoverFrame(service="tts", from_url="ws://c", to_url="ws://d", reason="ping timeout"))
    assert recorder.report_fields() == {
        "failovers": [
            {"at_s": 1.5, "service": "moshi", "from": "ws://a/api/chat", "to": "ws://b/api/chat",
             "reason": "the socket closed", "degraded": True},
            {"at_s": 3.0, "service": "tts", "from": "ws://c", "to": "ws://d", "reason": "ping timeout",
             "degraded": False},
        ],
        "degraded": True,
    }
    [turn] = recorder.turns
    assert [f.service for f in turn.failovers] == ["moshi", "tts"]
    turn.bot_started_s = 2.5  # an answered turn: handed on at the end
    recorder.finish()
    assert turns == [turn]

    metrics = ServeMetrics(active_sessions=lambda: 0)
    metrics.observe_turn(turn)
    text = metrics.render().decode()
    assert 'vivavoce_worker_failovers_total{degraded="true",service="moshi",to="worker"} 1.0' in text
    assert 'vivavoce_worker_failovers_total{degraded="false",service="tts",to="worker"} 1.0' in text
