"""The fleet on one machine: routing on a real redis-server, and failover when the worker speaking is killed.

    python bench/fleet.py                 # routing with 3 and 100 registered workers, 20 kills
    python bench/fleet.py --kills 5       # quicker

Prints JSON. Figures:

- ``routing``: the agent's choice of a worker (``WorkerDirectory.pick``: one ZRANGEBYSCORE, the hashes in
  one pipeline, the power of two choices), p50/p99 over 2000 choices, with 3 real Piper workers and with
  100 simulated entries; the registry's memory for 100 workers (Redis ``MEMORY USAGE`` of their hashes and
  of the family's index).
- ``failover``: two real Piper workers; a four-sentence reply through ``PiperWorkerTTSService`` (registry
  routing), the worker speaking it killed with SIGKILL at its first audio, then restarted. Per kill: the
  longest silence a listener hears inside the reply (played in real time from its first audio), whether
  another worker finished it, and whether the whole reply arrived (at least 0.9 of the audio of an
  undisturbed run). Calls dropped = replies that did not finish.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # worker_support: start a Piper worker
sys.path.insert(0, str(REPO / "workers" / "common"))

from vivavoce.processors.piper_worker import PiperWorkerTTSService  # noqa: E402
from vivavoce.testing.redis_server import RedisServer  # noqa: E402
from vivavoce.testing.tts_probe import longest_silence_secs, speak_reply  # noqa: E402
from vivavoce.worker_directory import Selector, WorkerDirectory, family_index  # noqa: E402
from vivavoce_worker.registration import Registration  # noqa: E402
from worker_support import start_piper  # noqa: E402

JOE = Selector(family="piper", voice="en_US-joe-medium")


async def entries_when(directory: WorkerDirectory, check, secs: float) -> list:
    deadline = time.monotonic() + secs
    while not check(entries := await directory.workers(JOE)) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return entries


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


async def routing(directory: WorkerDirectory, picks: int = 2000) -> dict:
    times = []
    for _ in range(picks):
        started = time.perf_counter()
        assert await directory.pick(JOE) is not None
        times.append((time.perf_counter() - started) * 1000)
    return {"picks": picks, "p50_ms": percentile(times, 0.5), "p99_ms": percentile(times, 0.99)}


async def simulated(redis_url: str, count: int) -> list[Registration]:
    workers = []
    for i in range(count):
        stats = {"active_sessions": i % 8, "queue_depth": i % 3}
        worker = Registration(
            redis_url, family="piper", url=f"ws://10.0.{i // 250}.{i % 250}:8002/v1/stream", max_sessions=16,
            stats=lambda stats=stats: stats, voices=["en_US-joe-medium"], ttl_ms=600_000, refresh_secs=300,
        )  # fmt: skip
        await worker.start()
        workers.append(worker)
    return workers


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    args = parser.parse_args()
    result: dict = {}
    logs = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    with RedisServer().running() as redis:
        directory = WorkerDirectory(redis.url)
        a_http, a = start_piper(logs / "a.log", "--registry", redis.url, auth=False)
        b_http, b = start_piper(logs / "b.log", "--registry", redis.url, auth=False)
        with contextlib.ExitStack() as running:
            a_process, b_process = running.enter_context(a), running.enter_context(b)
            await entries_when(directory, lambda e: len(e) == 2, secs=10)
            result["routing_2_workers"] = await routing(directory)
            fake = await simulated(redis.url, 100)
            result["routing_102_workers"] = await routing(directory)
            redis_client = directory._redis
            result["registry_bytes_100_workers"] = sum(
                [await redis_client.memory_usage(worker.key) for worker in fake]
            ) + await redis_client.memory_usage(family_index("piper"))
            for worker in fake:
                await worker.stop()

            reference, _ = await speak_reply(PiperWorkerTTSService, redis.url, JOE)
            processes = {a_http: a_process, b_http: b_process}
            gaps, complete, moved = [], 0, 0
            for _ in range(args.kills):
                killed: list[float] = []

                def kill(url: str, killed=killed) -> None:
                    http = url.removesuffix("/v1/stream").replace("ws://", "http://")
                    processes[http].send_signal(signal.SIGKILL)
                    killed.append(time.monotonic())

                heard, first = await speak_reply(PiperWorkerTTSService, redis.url, JOE, on_first_audio=kill)
                gaps.append(longest_silence_secs(heard.chunks) * 1000)
                complete += heard.audio_secs >= 0.9 * reference.audio_secs
                moved += any(worker not in (None, first) for _, _, worker in heard.chunks)
                # Restart the killed worker on its port, as an orchestrator would.
                http = first.removesuffix("/v1/stream").replace("ws://", "http://")
                port = int(http.rsplit(":", 1)[1])
                restarted_http, restarted = start_piper(
                    logs / f"r{port}.log", "--registry", redis.url, auth=False, port=port
                )
                processes[http] = running.enter_context(restarted)
                await entries_when(directory, lambda e: len(e) == 2, secs=20)
            result["failover"] = {
                "kills": args.kills,
                "longest_silence_heard_ms": {
                    "undisturbed": round(longest_silence_secs(reference.chunks) * 1000, 1),
                    "p50": percentile(gaps, 0.5),
                    "p95": percentile(gaps, 0.95),
                    "max": round(max(gaps), 1),
                },
                "replies_finished_by_another_worker": moved,
                "replies_complete": complete,
                "replies_dropped": args.kills - complete,
            }
        await directory.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
