"""The fleet's registry on a real redis-server: workers register, agents find and pick them.

The worker's half (``vivavoce_worker.registration``, in each worker's venv) is imported from workers/common
so that both halves are tested against each other, on the key layout PROTOCOL.md documents.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vivavoce.testing.processes import free_port
from vivavoce.testing.redis_server import RedisServer
from vivavoce.worker_directory import (
    RegistryUnavailableError,
    Selector,
    WorkerDirectory,
    WorkerEntry,
    choose,
    family_index,
    worker_key,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workers" / "common"))
from vivavoce_worker.registration import Registration, RegistryError  # noqa: E402

PIPER = Selector(family="piper")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer().running() as server:
        yield server


@pytest.fixture
async def directory(redis_server):
    directory = WorkerDirectory(redis_server.url)
    await directory._redis.flushdb()
    yield directory
    await directory.close()


def registration(redis_server, *, url="ws://127.0.0.1:9001/v1/stream", sessions=0, queued=0, **kwargs):
    stats = {"active_sessions": sessions, "queue_depth": queued}
    settings = {"family": "piper", "max_sessions": 4, "voices": ["en_US-joe-medium"], "version": "0.1.0"} | kwargs
    return Registration(redis_server.url, url=url, stats=lambda: stats, **settings), stats


async def test_a_registered_worker_is_found_with_what_it_said(redis_server, directory):
    worker, _ = registration(redis_server, sessions=1, queued=2)
    await worker.start()
    try:
        [entry] = await directory.workers(PIPER)
        assert entry.url == "ws://127.0.0.1:9001/v1/stream" and entry.boot_id == worker.boot_id
        assert (entry.active_sessions, entry.queue_depth, entry.max_sessions, entry.state) == (1, 2, 4, "ready")
        assert entry.voices == ("en_US-joe-medium",) and entry.version == "0.1.0"
        assert entry.key == worker_key("piper", worker.boot_id)
        assert (await directory.pick(PIPER)).key == entry.key
        assert await directory.workers(Selector(family="csm")) == []
        assert await directory.workers(Selector(family="piper", voice="en_GB-alan-low")) == []
    finally:
        await worker.stop()
    assert await directory.workers(PIPER) == []  # a worker that exits removes itself


async def test_the_entry_follows_the_live_figures_at_each_refresh(redis_server, directory):
    worker, stats = registration(redis_server, refresh_secs=0.1)
    await worker.start()
    try:
        stats["active_sessions"] = 3
        await asyncio.sleep(0.35)
        [entry] = await directory.workers(PIPER)
        assert entry.active_sessions == 3
    finally:
        await worker.stop()


async def test_draining_and_full_workers_are_not_picked(redis_server, directory):
    draining, _ = registration(redis_server, url="ws://127.0.0.1:9001/v1/stream")
    full, _ = registration(redis_server, url="ws://127.0.0.1:9002/v1/stream", sessions=4)
    free, _ = registration(redis_server, url="ws://127.0.0.1:9003/v1/stream", sessions=3)
    for worker in (draining, full, free):
        await worker.start()
    try:
        await draining.drain()
        assert len(await directory.workers(PIPER)) == 3  # all live
        for _ in range(20):
            assert (await directory.pick(PIPER)).url == "ws://127.0.0.1:9003/v1/stream"
        assert await directory.pick(PIPER, exclude=[free.key]) is None
    finally:
        for worker in (draining, full, free):
            await worker.stop()


async def test_a_worker_that_dies_drops_out_when_its_entry_expires(redis_server, directory):
    worker, _ = registration(redis_server, ttl_ms=300, refresh_secs=0.1)
    await worker.start()
    assert len(await directory.workers(PIPER)) == 1
    worker._task.cancel()  # the process is gone: no refresh, no clean-up
    await asyncio.sleep(0.5)
    assert await directory.workers(PIPER) == []
    await worker._redis.aclose()


def test_the_power_of_two_choices_never_picks_the_busiest():
    entries = [
        WorkerEntry(key=f"k{i}", family="piper", url=f"ws://h:{i}/v1/stream", boot_id=str(i), version="",
                    state="ready", max_sessions=10, active_sessions=n, queue_depth=0)
        for i, n in enumerate((1, 5, 9))
    ]  # fmt: skip
    rng = random.Random(7)
    picked = [choose(entries, rng).active_sessions for _ in range(300)]
    assert 9 not in picked
    assert picked.count(1) > picked.count(5)  # the least loaded wins every draw it is in: 2 of 3
    assert choose([], rng) is None and choose(entries[:1], rng) is entries[0]


async def test_a_malformed_entry_is_ignored_and_the_others_still_serve(redis_server, directory):
    worker, _ = registration(redis_server)
    await worker.start()
    redis = directory._redis
    try:
        bad = {
            worker_key("piper", "nourl"): {"family": "piper", "boot_id": "nourl", "state": "ready",
                                           "max_sessions": "2", "active_sessions": "0"},
            worker_key("piper", "http"): {"family": "piper", "url": "http://h:1/", "boot_id": "http", "state": "ready",
                                          "max_sessions": "2", "active_sessions": "0"},
            worker_key("piper", "nan"): {"family": "piper", "url": "ws://h:2/v1/stream", "boot_id": "nan",
                                         "state": "ready", "max_sessions": "many", "active_sessions": "0"},
        }  # fmt: skip
        for key, fields in bad.items():
            await redis.hset(key, mapping=fields)
            await redis.zadd(family_index("piper"), {key: 2**50})
        entries = await directory.workers(PIPER)
        assert [e.key for e in entries] == [worker.key]
    finally:
        await worker.stop()


async def test_a_worker_re_registers_after_redis_restarts_empty():
    server = RedisServer()
    with server.running():
        worker, _ = registration(server, refresh_secs=0.1)
        await worker.start()
    with server.running():  # the same port, nothing kept
        fresh = WorkerDirectory(server.url)
        try:
            for _ in range(50):
                if await fresh.workers(PIPER):
                    break
                await asyncio.sleep(0.1)
            assert [e.boot_id for e in await fresh.workers(PIPER)] == [worker.boot_id]
        finally:
            await worker.stop()
            await fresh.close()


async def test_an_unreachable_registry_is_a_clear_error_on_both_sides():
    url = f"redis://127.0.0.1:{free_port()}/0"
    directory = WorkerDirectory(url)
    with pytest.raises(RegistryUnavailableError, match=f"registry at {url} does not answer"):
        await directory.check()
    with pytest.raises(RegistryUnavailableError, match="does not answer"):
        await directory.workers(PIPER)
    await directory.close()
    worker = Registration(url, family="piper", url="ws://h:1/v1/stream", max_sessions=1, stats=dict)
    with pytest.raises(RegistryError, match=f"registry at {url} does not answer"):
        await worker.start()


def test_a_worker_with_the_voice_loaded_is_preferred_to_a_less_busy_one_that_would_load_it():
    def entry(i: int, active: int, resident: tuple[str, ...] | None) -> WorkerEntry:
        return WorkerEntry(key=f"k{i}", family="piper", url=f"ws://h:{i}/v1/stream", boot_id=str(i), version="",
                           state="ready", max_sessions=10, active_sessions=active, queue_depth=0,
                           voices=("joe", "amy"), resident=resident)  # fmt: skip

    warm, cold = entry(0, 6, ("amy",)), entry(1, 1, ("joe",))
    rng = random.Random(3)
    assert {choose([warm, cold], rng, voice="amy").key for _ in range(20)} == {"k0"}
    assert {choose([warm, cold], rng, voice="joe").key for _ in range(20)} == {"k1"}
    # Without on-demand voices (no resident field) every voice is loaded: load alone decides.
    assert choose([entry(0, 6, None), entry(1, 1, None)], rng, voice="amy").key == "k1"
    # As a worker whose voices load on demand writes its entry, and as one whose voices are all loaded does.
    on_demand = Registration("redis://127.0.0.1:1/0", family="piper", url="ws://h:1/v1/stream", max_sessions=4,
                             stats=dict, voices=["joe", "amy"], resident=lambda: ["amy"])  # fmt: skip
    parsed = WorkerEntry.parse("k", {k: str(v) for k, v in on_demand.fields().items()})
    assert parsed.resident == ("amy",) and parsed.has_loaded("amy") and not parsed.has_loaded("joe")
    all_loaded = Registration("redis://127.0.0.1:1/0", family="csm", url="ws://h:2/v1/stream", max_sessions=4,
                              stats=dict, voices=["joe"])  # fmt: skip
    assert "resident" not in all_loaded.fields()
    assert WorkerEntry.parse("k", {k: str(v) for k, v in all_loaded.fields().items()}).has_loaded("joe")
