"""Real workers in a fleet: Piper workers registering in a real redis-server, refusing when full, draining on
SIGTERM, and the agent's TTS failing over to another worker when the one speaking is killed (kill -9); a
worker joining, Redis restarting empty under a conversation, a worker advertising a wrong URL, and a full
worker refusing an agent that picked it from a stale entry."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from loguru import logger
from websockets.exceptions import ConnectionClosed

from vivavoce.processors.piper_worker import PiperWorkerTTSService
from vivavoce.testing.redis_server import RedisServer
from vivavoce.testing.tts_probe import Conversation, speak_reply
from vivavoce.worker_directory import Selector, WorkerDirectory
from worker_support import REPO, eventually, free_port, start_piper

sys.path.insert(0, str(REPO / "workers" / "common"))
from vivavoce_worker.registration import Registration  # noqa: E402

JOE = Selector(family="piper", voice="en_US-joe-medium")
LONG = " ".join(["The quick brown fox jumps over the lazy dog, and then it runs far away into the woods."] * 6)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer().running() as server:
        yield server


def entries_when(directory: WorkerDirectory, check, secs: float = 5.0):
    """The registry's Piper workers once ``check(entries)`` holds (the last read if it never does)."""
    return eventually(lambda: directory.workers(JOE), check, secs)


def registered_pipers(tmp_path, registry: str, *names: str) -> list[tuple[str, Any]]:
    """A Piper worker per name registering in ``registry``: (its http URL, a context manager running it)."""
    return [start_piper(tmp_path / f"{name}.log", "--registry", registry, auth=False) for name in names]


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
    (a_http, a), (b_http, b) = registered_pipers(tmp_path, redis_server.url, "a", "b")
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


def ws_of(http: str) -> str:
    """The streaming URL of a worker served at ``http``."""
    return http.replace("http://", "ws://") + "/v1/stream"


@pytest.mark.e2e
async def test_a_worker_joining_takes_new_conversations(redis_server, tmp_path):
    (a_http, a), (b_http, b) = registered_pipers(tmp_path, redis_server.url, "a", "b")
    directory = WorkerDirectory(redis_server.url)
    try:
        with a:
            await entries_when(directory, lambda e: len(e) == 1)
            async with Conversation(PiperWorkerTTSService, redis_server.url, JOE) as first:
                assert first.connects[-1][1] == ws_of(a_http)  # the only worker
                await entries_when(directory, lambda e: e and e[0].active_sessions == 1)
                with b:  # joins while a conversation is on A
                    await entries_when(directory, lambda e: len(e) == 2)
                    async with Conversation(PiperWorkerTTSService, redis_server.url, JOE) as second:
                        # The less loaded of the two: the new worker, at once.
                        assert second.connects[-1][1] == ws_of(b_http), second.connects
                        reply = await second.say()
                        assert reply.finished and reply.sentences_lost == 0
                        assert reply.workers == {ws_of(b_http)}
                    assert (await first.say()).finished  # the first conversation went on where it was
    finally:
        await directory.close()


@pytest.mark.e2e
async def test_redis_restarting_empty_under_a_live_conversation(tmp_path):
    with RedisServer().running() as redis:
        http, worker = start_piper(tmp_path / "w.log", "--registry", redis.url, auth=False)
        directory = WorkerDirectory(redis.url)
        try:
            with worker:
                [entry] = await entries_when(directory, lambda e: len(e) == 1)
                async with Conversation(PiperWorkerTTSService, redis.url, JOE) as call:
                    assert (await call.say()).finished
                    await asyncio.to_thread(redis.restart)  # empty: no entry, no index
                    reply = await call.say()
                    # The conversation went on, on its socket: no reconnect, the whole reply.
                    assert reply.finished and reply.sentences_lost == 0 and reply.audio_secs > 5
                    assert len(call.connects) == 1 and reply.workers == {ws_of(http)}
                    # The worker wrote itself back (same boot: it never stopped)... (read with a new client:
                    # the old one's pooled connection died with the server, and its first read fails)
                    await directory.close()
                    directory = WorkerDirectory(redis.url)
                    [back] = await entries_when(directory, lambda e: len(e) == 1)
                    assert (back.boot_id, back.url, back.state) == (entry.boot_id, ws_of(http), "ready")
                # ...and a new conversation is routed to it.
                async with Conversation(PiperWorkerTTSService, redis.url, JOE) as new_call:
                    assert new_call.connects and new_call.connects[-1][1] == ws_of(http)
                    assert (await new_call.say()).finished
        finally:
            await directory.close()


@pytest.mark.e2e
async def test_a_worker_advertising_a_wrong_url_is_skipped(redis_server, tmp_path):
    nowhere = f"ws://127.0.0.1:{free_port()}/v1/stream"  # nobody listens there
    bad_http, bad = start_piper(
        tmp_path / "bad.log", "--registry", redis_server.url, "--advertise-url", nowhere, auth=False
    )
    good_http, good = start_piper(tmp_path / "good.log", "--registry", redis_server.url, auth=False)
    directory = WorkerDirectory(redis_server.url)
    try:
        with bad, good:
            await entries_when(directory, lambda e: len(e) == 2)
            # One session on the good worker makes the bad entry the less loaded: it is tried first.
            async with websockets.connect(ws_of(good_http)):
                entries = await entries_when(
                    directory, lambda e: any(x.url == ws_of(good_http) and x.active_sessions == 1 for x in e)
                )
                assert {e.url for e in entries} == {nowhere, ws_of(good_http)}
                assert (await directory.pick(JOE)).url == nowhere
                async with Conversation(PiperWorkerTTSService, redis_server.url, JOE) as call:
                    assert [url for _, url in call.connects] == [ws_of(good_http)]
                    reply = await call.say()
                    assert reply.finished and reply.sentences_lost == 0 and reply.workers == {ws_of(good_http)}
    finally:
        await directory.close()


@pytest.mark.e2e
async def test_a_full_worker_refuses_and_the_agent_lands_on_another(redis_server, tmp_path):
    full_http, full = start_piper(tmp_path / "full.log", "--max-sessions", "1", auth=False)
    other_http, other = start_piper(tmp_path / "other.log", "--registry", redis_server.url, auth=False)
    # The full worker as a registry a second old still shows it: room for one. (Its own entry would say it is
    # full at the next refresh; this one keeps the race open for the test.)
    stale = Registration(
        redis_server.url, family="piper", url=ws_of(full_http), max_sessions=1,
        stats=lambda: {"active_sessions": 0, "queue_depth": 0}, voices=["en_US-joe-medium"],
    )  # fmt: skip
    directory = WorkerDirectory(redis_server.url)
    peak = [0]
    try:
        with full, other:
            await stale.start()
            async with websockets.connect(ws_of(full_http)), websockets.connect(ws_of(other_http)):
                # The full worker holds its one session; the other is busier on paper, so the stale entry wins.
                entries = await entries_when(
                    directory, lambda e: any(x.url == ws_of(other_http) and x.active_sessions == 1 for x in e)
                )
                assert len(entries) == 2
                assert (await directory.pick(JOE)).url == ws_of(full_http)

                async def watch() -> None:  # the full worker's own count, all along
                    async with httpx.AsyncClient() as client:
                        while True:
                            health = (await client.get(full_http + "/health")).json()
                            peak[0] = max(peak[0], health["active_sessions"])
                            await asyncio.sleep(0.05)

                watching = asyncio.create_task(watch())
                warnings: list[str] = []
                sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
                try:
                    async with Conversation(PiperWorkerTTSService, redis_server.url, JOE) as call:
                        # It tried the full one first, was refused (1013) right after the handshake and moved on
                        # before sending anything: its one socket is to the other worker.
                        assert any(ws_of(full_http) in w and "1013" in w for w in warnings), warnings
                        assert [url for _, url in call.connects] == [ws_of(other_http)], call.connects
                        reply = await call.say()
                        assert reply.finished and reply.sentences_lost == 0
                        assert reply.workers == {ws_of(other_http)}
                finally:
                    logger.remove(sink)
                    watching.cancel()
                    await asyncio.gather(watching, return_exceptions=True)
            assert peak[0] == 1  # never over-admitted
    finally:
        await stale.stop()
        await directory.close()
