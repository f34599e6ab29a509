"""The fleet on one machine: routing on a real redis-server, and failover when the worker speaking is killed.

    python bench/fleet.py                 # routing with 3 and 100 registered workers, 20 kills
    python bench/fleet.py --kills 5       # quicker

Prints JSON. Figures:

- ``routing``: the agent's choice of a worker (``WorkerDirectory.pick``: one ZRANGEBYSCORE, the hashes in
  one pipeline, the power of two choices), p50/p99 over 2000 choices, with 3 real Piper workers and with
  100 simulated entries; the registry's memory (Redis ``used_memory`` with the 100 entries minus empty).
- ``failover``: two real Piper workers; a four-sentence reply through ``PiperWorkerTTSService`` (registry
  routing), the worker speaking it killed with SIGKILL at its first audio, then restarted. Per kill: the
  time from the kill to the next audio from the other worker, and whether the whole reply arrived (at least
  0.9 of the audio of an undisturbed run). Calls dropped = replies that did not finish.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # worker_support: start a Piper worker
sys.path.insert(0, str(REPO / "workers" / "common"))

from vivavoce.processors.piper_worker import PiperWorkerTTSService  # noqa: E402
from vivavoce.testing.redis_server import RedisServer  # noqa: E402
from vivavoce.testing.tts_probe import speak_reply  # noqa: E402
from vivavoce.worker_directory import Selector, WorkerDirectory  # noqa: E402
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
            stats=lambda stats=stats: stats, voices=["en_US-joe-medium"], refresh_secs=30,
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
            empty = (await directory._redis.info("memory"))["used_memory"]
            fake = await simulated(redis.url, 100)
            result["routing_102_workers"] = await routing(directory)
            result["registry_bytes_100_workers"] = (await directory._redis.info("memory"))["used_memory"] - empty
            for worker in fake:
                await worker.stop()

            reference, _ = await speak_reply(PiperWorkerTTSService, redis.url, JOE)
            processes = {a_http: a_process, b_http: b_process}
            gaps, complete = [], 0
            for _ in range(args.kills):
                killed: list[float] = []

                def kill(url: str, killed=killed) -> None:
                    http = url.removesuffix("/v1/stream").replace("ws://", "http://")
                    processes[http].send_signal(signal.SIGKILL)
                    killed.append(time.monotonic())

                heard, first = await speak_reply(PiperWorkerTTSService, redis.url, JOE, on_first_audio=kill)
                after = [t for t in heard.arrivals if t > killed[0]]
                if after:
                    gaps.append((after[0] - killed[0]) * 1000)
                complete += heard.audio_secs >= 0.9 * reference.audio_secs
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
                "next_audio_after_kill_ms": {
                    "p50": percentile(gaps, 0.5),
                    "p95": percentile(gaps, 0.95),
                    "max": round(max(gaps), 1),
                }
                if gaps
                else None,
                "replies_complete": complete,
                "replies_dropped": args.kills - complete,
            }
        await directory.close()
    print(json.dumps(result, indent=2))
    print(f"median next audio after a kill: {statistics.median(gaps):.0f} ms" if gaps else "no gaps", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
