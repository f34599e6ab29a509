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
from websockets.exceptions import ConnectionClosed

from vivavoce.processors.piper_worker import PiperWorkerTTSService
from vivavoce.testing.redis_server import RedisServer
from vivavoce.testing.tts_probe import speak_reply
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


@pytest.mark.e2e
async def test_a_worker_killed_mid_reply_the_rest_is_spoken_by_another(redis_server, tmp_path):
    a_http, a = start_piper(tmp_path / "a.log", "--registry", redis_server.url, auth=False)
    b_http, b = start_piper(tmp_path / "b.log", "--registry", redis_server.url, auth=False)
    directory = WorkerDirectory(redis_server.url)
    try:
        with a as a_process, b as b_process:
            await entries_when(directory, lambda e: len(e) == 2)
            reference, _ = await speak_reply(PiperWorkerTTSService, redis_server.url, JOE)
            processes = {a_http.replace("http://", "ws://"): a_process, b_http.replace("http://", "ws://"): b_process}
            killed: list[float] = []

            def kill(url: str) -> None:
                processes[url.removesuffix("/v1/stream")].send_signal(signal.SIGKILL)
                killed.append(time.monotonic())

            heard, first = await speak_reply(PiperWorkerTTSService, redis_server.url, JOE, on_first_audio=kill)
            assert processes[first.removesuffix("/v1/stream")].wait(5) == -signal.SIGKILL
            after = [t for t in heard.arrivals if t > killed[0]]
            assert after, "no audio came after the worker was killed"
            # Everything was said: what the dead worker had not sent came from the other one.
            assert heard.audio_secs >= 0.9 * reference.audio_secs, (heard.audio_secs, reference.audio_secs)
            assert heard.audio_secs <= 1.5 * reference.audio_secs  # at most a sentence said twice
    finally:
        await directory.close()
