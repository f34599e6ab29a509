"""`vivavoce serve --workers N`: several processes behind one port act as one server.

The live-session registry they share, then a real two-process server taking real calls: the webhook and
the stream may reach different processes, a second stream for a live call is refused whichever process
it reaches, and /health and /metrics count every process's calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soxr

from vivavoce.live_sessions import LiveSessions
from vivavoce.samples import conversation
from vivavoce.testing.media_streams import MediaStreamsCaller, call_sid
from vivavoce.testing.processes import free_port, serving

REPO = Path(__file__).resolve().parents[1]


# --- the shared registry ----------------------------------------------------------------------


def test_a_session_is_claimed_once_across_registries(tmp_path: Path) -> None:
    one, other = LiveSessions(tmp_path), LiveSessions(tmp_path)  # two processes' views of one directory
    sid = call_sid()
    assert one.claim(sid)
    assert not other.claim(sid) and not one.claim(sid)
    assert one.count() == other.count() == 1
    one.release(sid)
    assert other.count() == 0 and other.claim(sid)


def test_only_the_holder_releases(tmp_path: Path) -> None:
    registry = LiveSessions(tmp_path)
    sid = call_sid()
    (tmp_path / sid).write_text(str(os.getppid()))  # held by another live process
    registry.release(sid)
    assert (tmp_path / sid).exists() and registry.count() == 1 and not registry.claim(sid)


def test_claims_of_a_dead_process_are_stale(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sid = call_sid()
    (tmp_path / sid).write_text(str(dead.pid))
    registry = LiveSessions(tmp_path)
    assert registry.count() == 0
    assert registry.claim(sid) and (tmp_path / sid).read_text() == str(os.getpid())


@pytest.mark.parametrize("bad", ["../etc/passwd", "", "a/b", "x" * 200, "CA\n1"])
def test_session_ids_cannot_name_other_files(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="not a valid session id"):
        LiveSessions(tmp_path).claim(bad)


# --- a real two-process server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_processes() -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "VIVAVOCE_PUBLIC_URL": f"https://127.0.0.1:{port}",
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": "",
        "VIVAVOCE_LOG_LEVEL": "WARNING",
    }
    base = f"http://127.0.0.1:{port}"
    pids: set[int] = set()

    def both_answered() -> bool:  # both processes are up once each has answered (new connections land on either)
        pids.add(httpx.get(f"{base}/health", timeout=2).json()["pid"])
        return len(pids) == 2

    with serving(
        [sys.executable, "-m", "vivavoce.cli", "serve", str(REPO / "bots" / "twilio_load.yaml"), "--port", str(port),
         "--workers", "2", "--insecure-skip-signature"],
        health=both_answered,
        env=env,
        stop_secs=30,
    ):
        yield base


async def stream_token(base: str, sid: str) -> str:
    async with httpx.AsyncClient() as client:
        twiml = (await client.post(f"{base}/twilio/voice", data={"CallSid": sid, "From": "+15550001111"})).text
    return re.search(r'name="token" value="([^"]+)"', twiml).group(1)


def speech_8k() -> np.ndarray:
    """"Ever tried." from the bundled real-speech recording, at the phone's 8 kHz."""
    audio = conversation(gap_secs=0.0)
    pcm = audio.pcm[int(0.4 * audio.sample_rate) : int(1.6 * audio.sample_rate)]
    return soxr.resample(pcm, audio.sample_rate, 8000).astype(np.int16)


async def healths(base: str, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        async with httpx.AsyncClient() as client:  # a new connection each time: any process may answer
            out.append((await client.get(f"{base}/health")).json())
    return out


async def test_calls_are_served_and_counted_across_processes(two_processes: str) -> None:
    base, ws = two_processes, two_processes.replace("http", "ws") + "/twilio/ws"
    speech = speech_8k()
    callers = [
        MediaStreamsCaller(ws, token=await stream_token(base, sid), call=sid) for sid in (call_sid() for _ in range(4))
    ]
    async with contextlib.AsyncExitStack() as stack:
        for caller in callers:
            await stack.enter_async_context(caller)
        await asyncio.gather(*(c.silence(0.3) for c in callers))
        counts = {h["active_sessions"] for h in await healths(base, 8)}
        assert counts == {4}, "every process reports all four calls"

        # A second stream for a live call is refused whichever process takes it.
        for _ in range(3):
            duplicate = MediaStreamsCaller(ws, token=callers[0].token, call=callers[0].call_sid)
            async with duplicate:
                await duplicate.wait_closed(10)
            assert duplicate.close_code == 1008 and "live stream" in duplicate.close_reason

        await asyncio.gather(*(c.speak(speech) for c in callers))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(c.first_event("mark") for c in callers):
            await asyncio.gather(*(c.silence(0.1) for c in callers))
        assert all(c.received.frames for c in callers), "every call got its reply"

    deadline = time.monotonic() + 20
    while any(h["active_sessions"] for h in await healths(base, 4)):
        assert time.monotonic() < deadline, "the calls ended in every process's count"
        await asyncio.sleep(0.2)
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{base}/metrics")).text
    turns = float(re.search(r"^vivavoce_turns_total (\S+)$", metrics, re.M).group(1))
    assert turns == 4, "one scrape sums the turns of both processes"


async def test_a_process_that_dies_is_replaced(two_processes: str) -> None:
    """Runs last: it kills one of the module's serving processes."""
    base = two_processes
    victim = (await healths(base, 1))[0]["pid"]
    os.kill(victim, 9)
    deadline = time.monotonic() + 120
    seen: set[int] = set()
    while len(seen - {victim}) < 2:
        assert time.monotonic() < deadline, f"a new process replaced {victim} (answering: {seen})"
        try:
            seen |= {h["pid"] for h in await healths(base, 4)}
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.3)


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "vivavoce.cli",
                "serve",
                str(REPO / "bots" / "twilio_load.yaml"),
                "--port",
                str(port),
                "--workers",
                "2",
                "--insecure-skip-signature",
            ],
            env={**os.environ, "TWILIO_AUTH_TOKEN": ""},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
