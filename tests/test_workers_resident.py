"""The workers' model manager (``vivavoce_worker.resident``): unit tests with a fake loader and clock, then a real
Piper worker process serving three voices with two resident at most.

``ResidentModels`` needs only the standard library and loguru, so it is imported here from workers/common in the
agent's environment. The end-to-end worker runs from its own venv (``make worker-piper``); only one Piper voice
ships in a package, so its other voices are copies of en_US-joe-medium under other names: each loads as its own
ONNX session (a real load, real memory).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets

from vivavoce.packaged_models import piper_voice
from worker_support import REPO, piper_python, start_piper

sys.path.insert(0, str(REPO / "workers" / "common"))

from vivavoce_worker.resident import ResidentModels  # noqa: E402

JOE = "en_US-joe-medium"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loader:
    """Loads ``model-<key>-<n>``; ``gate`` (when set up) holds every load until the test opens it; ``fail`` keys
    fail once."""

    def __init__(self, *, gated: bool = False, fail: set[str] | None = None) -> None:
        self.calls: list[str] = []
        self.started = threading.Event()
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.fail = set(fail or ())

    def __call__(self, key: str) -> str:
        self.calls.append(key)
        self.started.set()
        assert self.gate.wait(10), "the test never opened the gate"
        if key in self.fail:
            self.fail.discard(key)
            raise RuntimeError(f"{key} is corrupt")
        return f"model-{key}-{len(self.calls)}"


def models(loader: Loader, clock: Clock, **options) -> ResidentModels[str]:
    return ResidentModels(loader, clock=clock, sweep_every_s=None, **options)


async def use(resident: ResidentModels, key: str) -> str:
    """Acquire and release at once: one request's use."""
    model = await resident.acquire(key)
    resident.release(key)
    return model


async def test_concurrent_first_requests_share_one_load_and_count_their_references():
    loader, clock = Loader(gated=True), Clock()
    resident = models(loader, clock)
    waiters = [asyncio.create_task(resident.acquire("a")) for _ in range(5)]
    assert await asyncio.to_thread(loader.started.wait, 10)
    await asyncio.sleep(0)  # every waiter has reached the load
    assert resident.report()["loading"] == ["a"] and resident.refs("a") == 5 and not resident.is_resident("a")
    loader.gate.set()
    got = await asyncio.gather(*waiters)
    assert got == ["model-a-1"] * 5 and loader.calls == ["a"]
    assert resident.refs("a") == 5 and resident.loads == 1 and resident.peek("a") == "model-a-1"
    for _ in range(4):
        resident.release("a")
    [entry] = resident.report()["resident"]
    assert entry["id"] == "a" and entry["refs"] == 1 and entry["uses"] == 5
    resident.release("a")
    assert resident.refs("a") == 0 and resident.is_resident("a")
    assert await use(resident, "a") == "model-a-1" and loader.calls == ["a"]  # resident: no second load
    resident.release("a")  # one release too many: logged, ignored
    assert resident.refs("a") == 0


async def test_idle_models_expire_after_the_ttl_but_never_while_in_use():
    clock = Clock()
    resident = models(Loader(), clock, idle_ttl_s=60)
    await use(resident, "a")
    await resident.acquire("b")  # held throughout
    clock.now += 59
    assert resident.sweep() == [] and set(resident.resident) == {"a", "b"}
    clock.now += 1
    assert resident.sweep() == ["a"] and resident.resident == ["b"]
    clock.now += 3600
    assert resident.sweep() == [] and resident.resident == ["b"]  # in use: idle time does not count
    resident.release("b")
    clock.now += 59
    assert resident.sweep() == []
    clock.now += 1
    assert resident.sweep() == ["b"] and resident.resident == []
    assert resident.evictions == 2
    assert [(e["event"], e["id"], e.get("reason")) for e in resident.events] == [
        ("load", "a", None),
        ("load", "b", None),
        ("evict", "a", "idle"),
        ("evict", "b", "idle"),
    ]


async def test_beyond_the_cap_the_least_recently_used_goes_first():
    loader, clock = Loader(), Clock()
    evicted: list[tuple[str, str]] = []
    resident = models(loader, clock, cap=2, on_evict=lambda key, model: evicted.append((key, model)))
    for key in ("a", "b", "a"):  # a used after b: b is the least recently used
        clock.now += 1
        await use(resident, key)
    clock.now += 1
    await use(resident, "c")
    assert resident.resident == ["c", "a"] and evicted == [("b", "model-b-2")]
    clock.now += 1
    await use(resident, "b")  # back: loaded again
    assert resident.resident == ["b", "c"] and loader.calls == ["a", "b", "c", "b"]
    assert resident.report()["evictions"] == 2 and resident.report()["resident_cap"] == 2


async def test_a_model_stays_its_minimum_residency_even_beyond_the_cap():
    clock = Clock()
    resident = models(Loader(), clock, cap=1, min_residency_s=30)
    await use(resident, "a")
    clock.now += 10
    await use(resident, "b")  # a is too recent to go: over the cap for now
    assert set(resident.resident) == {"a", "b"}
    clock.now += 19
    assert resident.sweep() == []
    clock.now += 1  # a has been resident 30 s; b only 20
    assert resident.sweep() == ["a"] and resident.resident == ["b"]


async def test_models_in_use_are_never_evicted_the_cap_gives_way():
    clock = Clock()
    resident = models(Loader(), clock, cap=1)
    await resident.acquire("a")
    clock.now += 1
    await resident.acquire("b")
    assert set(resident.resident) == {"a", "b"}  # both in use: over the cap, nobody refused
    clock.now += 1
    resident.release("b")  # b is idle now, a still in use: b goes
    assert resident.resident == ["a"] and resident.evictions == 1
    resident.release("a")
    assert resident.resident == ["a"]  # within the cap again


async def test_a_failing_load_is_reported_to_every_waiter_and_tried_again_next_time():
    loader, clock = Loader(gated=True, fail={"bad"}), Clock()
    resident = models(loader, clock)
    waiters = [asyncio.create_task(resident.acquire("bad")) for _ in range(3)]
    assert await asyncio.to_thread(loader.started.wait, 10)
    loader.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "corrupt" in str(r) for r in results)
    report = resident.report()
    assert report["load_failures"] == 1 and report["loads"] == 0 and report["resident"] == []
    assert report["loading"] == [] and resident.refs("bad") == 0
    assert report["model_events"][-1]["event"] == "load_failed" and "corrupt" in report["model_events"][-1]["error"]
    assert await use(resident, "bad") == "model-bad-2" and loader.calls == ["bad", "bad"]
    assert resident.loads == 1 and resident.is_resident("bad")


async def test_a_waiter_that_leaves_does_not_stop_the_load():
    loader, clock = Loader(gated=True), Clock()
    resident = models(loader, clock)
    waiter = asyncio.create_task(resident.acquire("a"))
    assert await asyncio.to_thread(loader.started.wait, 10)
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert resident.refs("a") == 0
    loader.gate.set()
    assert await use(resident, "a") == "model-a-1" and loader.calls == ["a"]  # the same load, finished


async def test_load_now_at_start_and_the_cap_is_checked():
    clock = Clock()
    resident = models(Loader(), clock, cap=2)
    assert resident.load_now("a") == "model-a-1" and resident.load_now("a") == "model-a-1"
    assert resident.resident == ["a"] and resident.loads == 1
    with pytest.raises(ValueError):
        ResidentModels(Loader(), cap=0)


async def test_the_periodic_sweep_expires_idle_models_unasked():
    clock = Clock()
    resident = ResidentModels(Loader(), clock=clock, idle_ttl_s=5, sweep_every_s=0.01)
    await use(resident, "a")
    clock.now += 5
    for _ in range(500):  # no timing assertion: wait (at most 5 s) for the sweeper to run
        if not resident.resident:
            break
        await asyncio.sleep(0.01)
    await resident.stop()
    assert resident.resident == [] and resident.evictions == 1


# -- a real Piper worker: three voices, at most two resident


def copy_voice(folder: Path, name: str) -> Path:
    """en_US-joe-medium under another name: a distinct voice as far as the worker knows."""
    joe = piper_voice()
    target = folder / f"{name}.onnx"
    shutil.copy(joe, target)
    shutil.copy(f"{joe}.json", f"{target}.json")
    return target


async def ask(url: str, path: str, message: dict, ends: tuple[str, ...]) -> tuple[bytes, dict]:
    """Send one request on a new socket: the audio bytes that came back, and the message of type ``ends``
    (or an ``error``) that closed it."""
    async with websockets.connect(url.replace("http://", "ws://") + path) as ws:
        await ws.send(json.dumps(message))
        audio = b""
        while True:
            reply = await asyncio.wait_for(ws.recv(), 60)
            if isinstance(reply, bytes):
                audio += reply
            elif (data := json.loads(reply))["type"] in (*ends, "error"):
                return audio, data


async def tts(url: str, voice: str, text: str = "Hello from the model manager.") -> tuple[np.ndarray, dict]:
    """One ``/v1/tts`` synthesize: its float32 audio (24 kHz) and closing message."""
    audio, end = await ask(
        url, "/v1/tts", {"type": "synthesize", "text": text, "voice_id": voice}, ("synthesis_complete",)
    )
    return np.frombuffer(audio, "<f4"), end


async def stream(url: str, voice: str, text: str = "Streamed from a voice loaded on demand.") -> tuple[bytes, dict]:
    """One ``/v1/stream`` synthesize: its PCM16 audio (22050 Hz) and closing message."""
    return await ask(url, "/v1/stream", {"type": "synthesize", "id": "r", "text": text, "voice": voice}, ("done",))


def health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=10).json()


@pytest.mark.e2e
async def test_a_piper_worker_loads_voices_on_demand_and_evicts_beyond_its_cap(tmp_path):
    amy = copy_voice(tmp_path, "amy")
    voices_dir = tmp_path / "voices"
    voices_dir.mkdir()
    copy_voice(voices_dir, "bob")
    broken = voices_dir / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    shutil.copy(f"{piper_voice()}.json", f"{broken}.json")
    args = ["--voice", JOE, "--voice", str(amy), "--voices-dir", str(voices_dir)]
    url, worker = start_piper(
        tmp_path / "worker.log", *args, "--resident-cap", "2", "--min-residency-secs", "0", auth=False
    )
    with worker:
        body = health(url)
        assert [(v["id"], v["resident"]) for v in body["voices"]] == [
            (JOE, True),
            ("amy", False),
            ("bob", False),
            ("broken", False),
        ]
        assert [r["id"] for r in body["resident"]] == [JOE] and body["loads"] == 1 and body["evictions"] == 0
        assert body["resident_cap"] == 2 and body["resident"][0]["load_ms"] > 0

        audio, done = await tts(url, JOE)  # resident since start
        assert done["type"] == "synthesis_complete" and len(audio) > 24000 * 0.5
        # Two first requests for amy at once, one over each protocol: one load, both answered.
        (amy_audio, amy_done), (amy_pcm, amy_stream_done) = await asyncio.gather(tts(url, "amy"), stream(url, "amy"))
        assert amy_done["type"] == "synthesis_complete" and len(amy_audio) > 24000 * 0.5
        assert amy_stream_done["type"] == "done" and len(amy_pcm) > 22050
        body = health(url)
        assert body["loads"] == 2 and body["evictions"] == 0
        assert [r["id"] for r in body["resident"]] == ["amy", JOE] and {r["refs"] for r in body["resident"]} == {0}

        # The third voice (from --voices-dir) loads; the least recently used (joe) goes.
        bob_pcm, bob_done = await stream(url, "bob")
        assert bob_done["type"] == "done" and bob_done["voice_load_ms"] > 0 and len(bob_pcm) > 22050
        body = health(url)
        assert body["loads"] == 3 and body["evictions"] == 1
        assert [r["id"] for r in body["resident"]] == ["bob", "amy"]
        assert [(v["id"], v["resident"]) for v in body["voices"]][:3] == [(JOE, False), ("amy", True), ("bob", True)]
        evict = [e for e in body["model_events"] if e["event"] == "evict"]
        assert [(e["id"], e["reason"]) for e in evict] == [(JOE, "lru")]
        assert [e["id"] for e in body["model_events"] if e["event"] == "load"] == [JOE, "amy", "bob"]
        assert all(e["load_ms"] > 0 for e in body["model_events"] if e["event"] == "load")

        # A resident voice: no load, none reported.
        _, warm = await stream(url, "amy")
        assert warm["type"] == "done" and "voice_load_ms" not in warm and health(url)["loads"] == 3

        # The default voice comes back on demand.
        audio, done = await tts(url, JOE)
        assert done["type"] == "synthesis_complete" and len(audio) > 24000 * 0.5
        body = health(url)
        assert body["loads"] == 4 and body["evictions"] == 2 and [r["id"] for r in body["resident"]] == [JOE, "amy"]

        # Unknown: a clear error naming the voices it has, on both protocols; nothing loads.
        _, refused = await tts(url, "nobody")
        assert refused["code"] == "unknown_voice" and all(v in refused["message"] for v in (JOE, "amy", "bob"))
        _, refused = await stream(url, "nobody")
        assert refused["type"] == "error" and all(v in refused["message"] for v in (JOE, "amy", "bob"))

        # A voice that fails to load: the request gets the error, /health counts it, the next request tries again.
        _, failed = await tts(url, "broken")
        assert failed["type"] == "error" and failed["code"] == "engine_error", failed
        body = health(url)
        assert body["load_failures"] == 1 and body["loads"] == 4 and "broken" not in [r["id"] for r in body["resident"]]
        copy_voice(voices_dir, "broken")  # repaired in place
        audio, done = await tts(url, "broken")
        assert done["type"] == "synthesis_complete" and len(audio) > 24000 * 0.5
        assert health(url)["loads"] == 5

        # A voice copied into --voices-dir after start is served without a restart.
        copy_voice(voices_dir, "carol")
        carol_pcm, carol_done = await stream(url, "carol")
        assert carol_done["type"] == "done" and len(carol_pcm) > 22050
        body = health(url)
        assert "carol" in [v["id"] for v in body["voices"]] and body["loads"] == 6
        assert len(body["resident"]) == 2 and body["resident"][0]["id"] == "carol"


def test_the_piper_worker_refuses_a_cap_below_what_it_loads_at_start(tmp_path):
    amy = copy_voice(tmp_path, "amy")
    for args, says in (
        (["--resident-cap", "0"], "--resident-cap must be at least 1"),
        (["--resident-cap", "1", "--preload", str(amy)], "below the 2 voices loaded at start"),
    ):
        command = [str(piper_python()), "-m", "vivavoce_piper", "--no-auth", *args]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and says in done.stderr, done.stderr
