"""Agents on many hosts: `vivavoce serve --registry` processes sharing one real redis-server.

First the call registry itself (leases, the shared stream-token secret) with two ``RedisCalls`` as two hosts
would hold them; then two real agent hosts on two ports, taking calls placed as Twilio places them (signed
webhooks, Media Streams): a second stream for a live call is refused on the other host, a hung-up call's
``<Connect action>`` hangs up, and a call whose host is killed (-9) goes on on the other host with its
conversation. The bot (tests/fleet_agent_bot.yaml) has a real LLM context and no models.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import soxr

from fleet_agents_support import CALLER_WORDS
from twilio_support import (
    PUBLIC_URL,
    Line,
    TwilioApiStandIn,
    answer_call,
    serving as serving_app,
    sign,
    stream_token,
    twilio_environ,
    voice_params,
    wait_until,
)
from vivavoce.botfile import load_bot
from vivavoce.call_store import RedisCalls, call_key
from vivavoce.samples import conversation
from vivavoce.server import create_app
from vivavoce.testing.media_streams import MediaStreamsCaller, call_sid
from vivavoce.testing.processes import free_port, serving
from vivavoce.testing.redis_server import RedisServer
from vivavoce.transports.call_tokens import CallTokens
from vivavoce.worker_directory import RegistryUnavailableError

TESTS = Path(__file__).resolve().parent
BOT = TESTS / "fleet_agent_bot.yaml"
CONTINUE_URL = PUBLIC_URL + "/twilio/continue"
GREETING = "Hello, this is the counting agent."


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer().running() as server:
        yield server


@pytest.fixture(scope="module")
def store(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client, to read what the hosts wrote."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


# --- the call registry: two hosts' views of one Redis --------------------------------------------------------------


def test_a_call_is_leased_once_across_hosts_and_released_only_by_its_holder(redis_server: RedisServer) -> None:
    one, other = RedisCalls(redis_server.url), RedisCalls(redis_server.url)
    try:
        sid = call_sid()
        assert one.claim(sid)
        assert not other.claim(sid), "a second stream for a live call is refused on any host"
        assert one.count() == other.count() >= 1
        other.release(sid)  # not the holder: nothing happens
        assert not other.claim(sid)
        one.release(sid)
        assert other.claim(sid)
        other.release(sid)
    finally:
        one.close()
        other.close()


def test_a_dead_hosts_lease_expires_and_a_vanished_one_is_renewed(redis_server: RedisServer, store) -> None:
    dead = RedisCalls(redis_server.url, lease_secs=0.6, renew_secs=0.2)
    alive = RedisCalls(redis_server.url, lease_secs=0.6, renew_secs=0.2)
    try:
        gone, kept = call_sid(), call_sid()
        assert dead.claim(gone) and alive.claim(kept)
        dead.close()  # stops renewing, as a killed host does
        asyncio.run(wait_until(lambda: alive.claim(gone), 10, "the dead host's lease to expire"))
        store.delete(call_key(kept, "lease"))  # as a Redis restarted under the call would have lost it
        asyncio.run(wait_until(lambda: store.get(call_key(kept, "lease")), 10, "the lease to be renewed"))
        assert store.get(call_key(kept, "lease")).decode() == alive.holder
    finally:
        alive.close()


def test_hosts_agree_on_one_stream_token_secret(redis_server: RedisServer, monkeypatch) -> None:
    monkeypatch.delenv("VIVAVOCE_STREAM_TOKEN_SECRET", raising=False)
    one, other = RedisCalls(redis_server.url), RedisCalls(redis_server.url)
    try:
        issued = CallTokens(shared=one.shared_secret)
        sid = call_sid()
        CallTokens(shared=other.shared_secret).verify(sid, issued.issue(sid))
    finally:
        one.close()
        other.close()


def test_an_unreachable_registry_is_named() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(RegistryUnavailableError, match=url):
        RedisCalls(url, connect_timeout_secs=0.5)


def test_serve_with_an_unreachable_registry_is_a_clear_error() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = subprocess.run(
        [sys.executable, "-m", "vivavoce.cli", "serve", str(BOT), "--port", str(free_port()), "--registry", url],
        env={**os.environ, **twilio_environ(), "PYTHONPATH": _pythonpath()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert url in result.stderr and "does not answer" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


async def test_a_call_taken_over_before_its_answer_is_answered_at_once(redis_server, store, monkeypatch) -> None:
    """Its host died between the caller's words and the answer: the next host answers them, without a greeting."""
    sid = call_sid()
    earlier = [{"role": "assistant", "content": GREETING}, {"role": "user", "content": CALLER_WORDS}]
    store.set(call_key(sid, "context"), json.dumps(earlier))
    with TwilioApiStandIn() as api:
        environ = twilio_environ(TWILIO_API_BASE_URL=api.url)
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        app = create_app(load_bot(BOT, environ=environ), registry=redis_server.url)
        try:
            async with serving_app(app) as running:
                token = await answer_call(running, sid)
                async with MediaStreamsCaller(running.ws, token=token, call=sid) as caller, Line(caller):
                    await wait_until(lambda: answered(store, sid, "Answer 1:"), 20, "the answer to the earlier words")
        finally:
            app.state.calls.registry.close()
    assert [m["content"] for m in messages(store, sid) if m["role"] == "assistant"] == [
        GREETING,
        "Answer 1: you have spoken 1 times.",
    ]


# --- two agent hosts ------------------------------------------------------------------------------------------------


@dataclass
class Host:
    """One agent host: its `vivavoce serve` process, its log, where it listens."""

    process: subprocess.Popen
    log: Path
    http: str
    ws: str


@pytest.fixture(scope="module")
def api() -> Iterator[TwilioApiStandIn]:
    """The stand-in for api.twilio.com the hosts hang calls up through."""
    with TwilioApiStandIn() as standin:
        yield standin


@pytest.fixture(scope="module")
def hosts(redis_server: RedisServer, api: TwilioApiStandIn, tmp_path_factory) -> Iterator[tuple[Host, Host]]:
    """Hosts A and B behind one public URL (the load balancer), sharing the Redis."""
    logs = tmp_path_factory.mktemp("hosts")
    a_port, b_port = free_port(), free_port()
    env = {**os.environ, **twilio_environ(TWILIO_API_BASE_URL=api.url), "PYTHONPATH": _pythonpath()}

    def serve(port: int, log: Path) -> contextlib.AbstractContextManager[subprocess.Popen]:
        command = [sys.executable, "-m", "vivavoce.cli", "serve", str(BOT), "--port", str(port),
                   "--registry", redis_server.url]
        return serving(command, health=f"http://127.0.0.1:{port}/health", env=env, log=log)

    with serve(a_port, logs / "a.log") as a, serve(b_port, logs / "b.log") as b:
        yield tuple(
            Host(process, logs / f"{name}.log", f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/twilio/ws")
            for name, port, process in (("a", a_port, a), ("b", b_port, b))
        )


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)


def speech_8k() -> np.ndarray:
    """A real utterance from the bundled recording, at the phone's 8 kHz."""
    audio = conversation(gap_secs=0.0)
    pcm = audio.pcm[int(0.4 * audio.sample_rate) : int(1.6 * audio.sample_rate)]
    return soxr.resample(pcm, audio.sample_rate, 8000).astype(np.int16)


async def post_signed(host: Host, path: str, params: dict[str, str]) -> httpx.Response:
    """A POST as Twilio makes it to the public URL, reaching ``host`` (the load balancer's choice)."""
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{host.http}{path}", data=params, headers={"X-Twilio-Signature": sign(params, PUBLIC_URL + path)}
        )


async def action(host: Host, sid: str, status: str = "in-progress") -> ET.Element:
    """Twilio's request to ``<Connect action>`` when the call's stream ended; the TwiML answered."""
    params = {**voice_params(sid), "CallStatus": status, "StreamSid": "MZ" + "0" * 32}
    response = await post_signed(host, "/twilio/continue", params)
    assert response.status_code == 200, response.text
    return ET.fromstring(response.text)


def messages(store: redis.Redis, sid: str) -> list[dict]:
    raw = store.get(call_key(sid, "context"))
    return json.loads(raw) if raw else []


def answered(store: redis.Redis, sid: str, text: str) -> bool:
    return any(m["role"] == "assistant" and text in str(m["content"]) for m in messages(store, sid))


async def health(host: Host) -> dict:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{host.http}/health", timeout=10)).json()


async def test_a_second_stream_for_a_live_call_is_refused_on_the_other_host(hosts, store) -> None:
    a, b = hosts
    sid = call_sid()
    twiml = (await post_signed(a, "/twilio/voice", voice_params(sid))).text
    connect = ET.fromstring(twiml).find("Connect")
    assert connect is not None and connect.get("action") == CONTINUE_URL, twiml
    token = stream_token(twiml)
    async with MediaStreamsCaller(a.ws, token=token, call=sid) as caller, Line(caller):
        await wait_until(lambda: answered(store, sid, GREETING), 20, "the greeting")
        assert (await health(b))["active_sessions"] == (await health(a))["active_sessions"] == 1
        duplicate = MediaStreamsCaller(b.ws, token=token, call=sid)
        async with duplicate:
            await duplicate.wait_closed(10)
        assert duplicate.close_code == 1008 and "live stream" in duplicate.close_reason
        assert caller.close_code is None, "the call itself goes on"


async def test_the_action_of_a_call_that_was_hung_up_hangs_up(hosts, store) -> None:
    a, b = hosts
    sid = call_sid()
    token = stream_token((await post_signed(b, "/twilio/voice", voice_params(sid))).text)
    async with MediaStreamsCaller(b.ws, token=token, call=sid) as caller, Line(caller):
        await wait_until(lambda: answered(store, sid, GREETING), 20, "the greeting")
    # The caller hung up (Twilio's `stop`); Twilio's action request reaches the other host.
    twiml = await action(a, sid)
    assert [child.tag for child in twiml] == ["Hangup"]
    assert store.get(call_key(sid, "ended")) == b"hung up"
    assert [child.tag for child in await action(a, call_sid(), status="completed")] == ["Hangup"]


async def test_an_unsigned_action_is_refused(hosts) -> None:
    a, _ = hosts
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{a.http}/twilio/continue", data={**voice_params(call_sid())})
    assert response.status_code == 403


async def test_a_call_whose_host_is_killed_goes_on_on_the_other_host_with_its_context(hosts, store, api) -> None:
    """Runs last: it kills host A, then stops host B under the call."""
    a, b = hosts
    sid = call_sid()
    speech = speech_8k()
    token = stream_token((await post_signed(a, "/twilio/voice", voice_params(sid))).text)
    async with MediaStreamsCaller(a.ws, token=token, call=sid) as caller, Line(caller) as line:
        await wait_until(lambda: answered(store, sid, GREETING), 20, "the greeting")
        await line.say(speech)
        await wait_until(lambda: answered(store, sid, "Answer 1:"), 20, "the first answer, saved by host A")
        os.kill(a.process.pid, signal.SIGKILL)
        a.process.wait(10)
        await caller.wait_closed(10)

    # Twilio requests the action; the load balancer sends it to the live host, which waits out A's lease.
    twiml = await action(b, sid)
    stream = twiml.find("./Connect/Stream")
    assert stream is not None and twiml.find("Connect").get("action") == CONTINUE_URL, ET.tostring(twiml)
    assert stream.get("url") == "wss://example.test/twilio/ws"
    token = stream.find("Parameter").get("value")

    async with MediaStreamsCaller(b.ws, token=token, call=sid) as caller, Line(caller) as line:
        await wait_until(lambda: "restored" in b.log.read_text(), 20, "B to restore the call's context")
        await line.say(speech)
        # The LLM counts the caller's turns in its context: 2 only if B has the turn A heard.
        await wait_until(lambda: answered(store, sid, "Answer 2:"), 20, "the second answer, from host B")
        assert caller.close_code is None
        # B stops (a rolling restart): the call is neither hung up nor recorded as ended, and its lease is
        # released at once, so its action would go on with it on a third host without waiting.
        b.process.send_signal(signal.SIGTERM)
        await caller.wait_closed(30)
    b.process.wait(30)  # uvicorn ends a graceful stop by raising the signal again: the status says SIGTERM
    assert "this host stops: the call goes on on another" in b.log.read_text()
    assert store.get(call_key(sid, "ended")) is None and store.get(call_key(sid, "lease")) is None
    assert not api.matching(lambda r: sid in r.path), "the call was not hung up"
    context = messages(store, sid)
    assert [m["content"] for m in context if m["role"] == "user"] == [CALLER_WORDS, CALLER_WORDS]
    assert [m["content"] for m in context if m["role"] == "assistant"] == [
        GREETING,
        "Answer 1: you have spoken 1 times.",
        "Answer 2: you have spoken 2 times.",
    ], "one greeting: B did not greet again"
    assert f"Call {sid}: continues on this host with its context restored" in b.log.read_text()
