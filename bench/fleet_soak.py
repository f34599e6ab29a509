"""The fleet soak (a bench, not CI): calls on Piper workers found through Redis for an hour, a worker killed
every 10 minutes, the resident memory of every process sampled each minute.

    python bench/fleet_soak.py                                        # 1 hour, 20 calls at a time
    python bench/fleet_soak.py --minutes 6 --kill-every 2 --calls 6 --sample-secs 30 --warmup-minutes 1   # shortened

Each of ``--calls`` callers dials, hears 2-4 replies (as bench/fleet.py's calls: the agent's
``PiperWorkerTTSService`` routed by the registry, each reply played in real time, then ``--pause`` s of the
caller talking), hangs up and dials again. Every ``--kill-every`` minutes the worker speaking a reply is
killed (SIGKILL) at the reply's first audio, and restarted on its port. Every ``--sample-secs`` the RSS
(``/proc/PID/status`` VmRSS) of this process (the agents), of redis-server and of every worker is recorded.
Prints JSON: calls placed and dropped, replies, sentences lost, the p99 and max gap between audio frames
heard by callers (the silence before a chunk while the reply plays, 0 when it came in time), and per
process its RSS at warm-up's end and at the end and its slope (MB per minute, least squares) after
``--warmup-minutes`` of its own life (a restarted worker warms up again); and this process's live objects
after a full collection at warm-up's end and at the end, with the types that grew (a leak keeps objects; a
heap that fills with garbage between full collections does not). The process settles its collector after
start-up as ``vivavoce serve`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import os
import random
import signal
import tempfile
import time
from pathlib import Path

from fleet import (
    REFERENCE_SECS,
    Calls,
    Fleet,
    bench_logs,
    entries_when,
    mid_reply,
    percentile,
    reference_secs,
    replies_heard,
)
from vivavoce.gc_tuning import return_freed_memory, settle_after_startup, trim_c_heap
from vivavoce.testing.redis_server import RedisServer
from vivavoce.testing.tts_probe import waits_secs


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MB (None: it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def heap_census() -> tuple[collections.Counter, float | None]:
    """Live objects by type after a full collection (what start-up loaded is frozen and not counted), and
    this process's RSS once the C heap has handed its free pages back (``malloc_trim``). The
    same census at warm-up's end and at the end tells a leak (objects that stay, RSS that stays) from garbage
    not yet collected and memory the allocator keeps (RSS that grows while neither does)."""
    gc.collect()
    trim_c_heap()
    return collections.Counter(type(o).__name__ for o in gc.get_objects()), rss_mb(os.getpid())


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (minute, MB) samples; None under 3 samples."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    return round(sum((t - mean_t) * (m - mean_m) for t, m in samples) / var, 3) if var else None


async def soak(args: argparse.Namespace, fleet: Fleet) -> dict:
    """Run the calls, the kills and the sampling for ``--minutes``."""
    calls = Calls(fleet.redis.url, pause=args.pause)
    started = time.monotonic()
    end = started + args.minutes * 60
    kills: list[dict] = []
    samples: dict[str, list[tuple[float, float]]] = {}  # "agents" / "redis" / "worker:<port> pid <pid>"

    async def caller() -> None:
        while time.monotonic() < end:
            await calls.call(random.randint(2, 4))
            await return_freed_memory()  # as an agent's Session does when it ends
            await asyncio.sleep(1.0)  # redial

    async def killer() -> None:
        while (at := time.monotonic() + args.kill_every * 60) < end:
            await asyncio.sleep(at - time.monotonic())
            url = await mid_reply(calls, secs=20) or await fleet.busiest()  # a worker mid-reply
            kills.append(
                {"minute": round((time.monotonic() - started) / 60, 1), **await fleet.restart(url, signal.SIGKILL)}
            )

    async def sampler() -> None:
        while time.monotonic() < end:
            minute = (time.monotonic() - started) / 60
            pids = {"agents": os.getpid(), "redis": fleet.redis.process.pid}  # agents: every call's pipeline
            for url, process in fleet.processes.items():
                if process.poll() is None:
                    pids[f"worker:{url.rsplit(':', 1)[1].split('/')[0]} pid {process.pid}"] = process.pid
            for name, pid in pids.items():
                if (mb := rss_mb(pid)) is not None:
                    samples.setdefault(name, []).append((round(minute, 2), round(mb, 1)))
            await asyncio.sleep(args.sample_secs)

    census: dict[str, collections.Counter] = {}
    placed: dict[str, int] = {}
    trimmed: dict[str, float | None] = {}

    async def take_census() -> None:
        await asyncio.sleep(max(0.0, started + args.warmup_minutes * 60 - time.monotonic()))
        (census["warmup_end"], trimmed["warmup_end"]), placed["warmup_end"] = heap_census(), len(calls.sockets)

    for _ in range(args.calls):
        calls.tasks.append(asyncio.create_task(caller()))
        await asyncio.sleep(args.pause / max(1, args.calls) + 0.5)  # callers out of step
    await asyncio.gather(killer(), sampler(), take_census(), *calls.tasks)
    (census["end"], trimmed["end"]), placed["end"] = heap_census(), len(calls.sockets)
    growth = census["end"] - census["warmup_end"]

    memory = {}
    for name, series in samples.items():  # warm-up counted from each process's first sample (restarts)
        after = [s for s in series if s[0] >= series[0][0] + args.warmup_minutes]
        memory[name] = {
            "samples": len(series),
            "first_mb": series[0][1],
            "at_warmup_end_mb": after[0][1] if after else None,
            "last_mb": series[-1][1],
            "slope_after_warmup_mb_per_min": slope_mb_per_min(after),
        }
    gaps = [w * 1000 for r in calls.replies for w in waits_secs(r.chunks)]
    return {
        "minutes": args.minutes,
        "concurrent_calls": args.calls,
        "workers": args.workers,
        "calls_placed": len(calls.sockets),
        "calls_dropped": calls.dropped,
        **replies_heard(calls.replies),
        "frame_gap_ms": {"frames": len(gaps), "p99": percentile(gaps, 0.99), "max": round(max(gaps, default=0.0), 1)},
        "kills": kills,
        "memory": memory,
        # The bench's own records grow too: a Reply (and its chunk list) per reply, a socket record per call.
        "live_objects_after_full_collection": {
            "warmup_end": sum(census["warmup_end"].values()),
            "end": sum(census["end"].values()),
            "calls_placed_between": placed["end"] - placed["warmup_end"],
            "rss_after_collect_and_malloc_trim_mb": trimmed,
            "most_grown_types": dict(growth.most_common(12)),
        },
        "memory_samples": samples,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--calls", type=int, default=20, help="calls at a time")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=10.0, help="minutes between worker kills")
    parser.add_argument("--sample-secs", type=float, default=60.0, help="RSS sampling interval")
    parser.add_argument("--warmup-minutes", type=float, default=5.0, help="memory slope from this minute on")
    parser.add_argument("--pause", type=float, default=10.0, help="the caller's answer between replies (s)")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="fleet-soak-"))
    with bench_logs(logs), RedisServer().running() as redis, contextlib.ExitStack() as stack:
        fleet = Fleet(redis, logs, stack)
        await asyncio.gather(*(fleet.start() for _ in range(args.workers)))
        await entries_when(fleet.directory, lambda e: len(e) == args.workers, secs=30)
        REFERENCE_SECS[0] = await reference_secs(redis.url)
        settle_after_startup()  # as `vivavoce serve` does once its models are loaded
        result = {"logs": str(logs), "reference_reply_audio_secs": REFERENCE_SECS[0], **await soak(args, fleet)}
        await fleet.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
