"""The fleet on one machine: real Piper workers found through a real redis-server, under calls.

    python bench/fleet.py                          # every part (a few minutes on 2 cores)
    python bench/fleet.py --only drain,rolling     # some parts
    python bench/fleet.py --kills 5 --calls 6      # quicker

Prints JSON. A call is a ``PiperWorkerTTSService`` (the agent's TTS, routed by the registry, with its
failover) in its own running pipeline, speaking four short sentences per reply, one reply after another:
each reply is played in real time from its first audio, then the caller answers (``--pause`` seconds)
before the next. A call is dropped when its TTS gives up (pipecat marks it unusable) or fails; a reply is
unfinished when its end (``TTSStoppedFrame``) does not come within 30 s. A sentence is lost when no worker
finished it nor the unspoken rest a failover sent again, or when its audio never reached the caller (the
reply's audio short of an undisturbed one's, counted in mean sentences). The silence heard in a reply is the
longest wait for audio while it plays (each chunk played as soon as it has arrived and the one before it
has played). Parts:

- ``routing``: ``WorkerDirectory.pick`` p50/p99 over 2000 choices with 2 real workers and 102 entries; the
  registry's memory for 100 workers (``MEMORY USAGE`` of their hashes and the family's index).
- ``failover``: the worker speaking a reply killed (SIGKILL) at its first audio, ``--kills`` times.
- ``drain``: ``--calls`` calls on 3 workers; the worker speaking a reply SIGTERMed (it drains) at the
  reply's first audio, ``--drains`` times, restarted after: calls dropped, sentences lost, silence heard
  in the replies in flight at the SIGTERM.
- ``rolling``: every worker restarted in turn (SIGTERM at a reply's first audio on it, exit, start,
  registered) under ``--calls`` calls.
- ``redis``: redis-server stopped and started again on its port, empty, under ``--calls`` calls: calls
  dropped, time until every worker is registered again and until a new call is routed and connected.
- ``join``: calls placed every 0.5 s (a one-sentence reply each) on the 3 workers; a worker started:
  time from its registration to its first session, ``--joins`` times.
- ``admission``: 3 workers with ``--max-sessions 2``; 6 callers at once, ``--rounds`` times; every
  worker's /health read every 50 ms: the most sessions any held, the calls that were refused and moved.
- ``traffic``: Redis ``INFO commandstats`` before/after calls: the agent's commands per call, and the
  workers' refresh commands per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from loguru import logger

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # worker_support: start a Piper worker
sys.path.insert(0, str(REPO / "workers" / "common"))

from vivavoce.processors.piper_worker import PiperWorkerTTSService  # noqa: E402
from vivavoce.testing.processes import free_port  # noqa: E402
from vivavoce.testing.redis_server import RedisServer  # noqa: E402
from vivavoce.testing.tts_probe import Conversation, Reply, longest_silence_secs, speak_reply  # noqa: E402
from vivavoce.worker_directory import Selector, WorkerDirectory, WorkerEntry, family_index  # noqa: E402
from vivavoce_worker.registration import Registration  # noqa: E402
from worker_support import start_piper  # noqa: E402

JOE = Selector(family="piper", voice="en_US-joe-medium")
REPLY = [
    "Good morning, thanks for calling.",
    "Your books are due next month.",
    "You can renew them online.",
    "Is there anything else?",
]
"""The calls' replies: four short sentences (about 6 s of audio), so that a few calls do not overload the
shared 2-core machine (a worker answering late is measured in bench/README.md, not here)."""
WORKER_COMMANDS = {"hset", "pexpire", "zadd", "zremrangebyscore", "multi", "exec"}
"""What a worker's refresh sends (one MULTI/EXEC pipeline a second); the rest is the agents'."""


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank), rounded; 0 for no values."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else 0.0


async def entries_when(directory: WorkerDirectory, check: Callable[[list[WorkerEntry]], bool], secs: float) -> list:
    """The registry's Piper workers once ``check(entries)`` holds (the last read if it never does)."""
    deadline = time.monotonic() + secs
    while not check(entries := await directory.workers(JOE)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return entries


class Fleet:
    """Piper workers registered in one redis-server, started, stopped and restarted while calls go on."""

    def __init__(self, redis: RedisServer, logs: Path, stack: contextlib.ExitStack, *worker_args: str):
        """Workers get ``--registry`` and ``worker_args``; their logs go to ``logs``."""
        self.redis, self.logs, self.stack, self.worker_args = redis, logs, stack, worker_args
        self.processes: dict[str, subprocess.Popen] = {}  # ws url -> process
        self.directory = WorkerDirectory(redis.url)
        self._started = 0

    async def start(self, port: int | None = None) -> str:
        """Start a worker (on ``port``, or a free one); returns its ws URL once it answers /health (it
        registers before that). Started in a thread: the calls go on meanwhile."""
        self._started += 1
        log = self.logs / f"worker{self._started}.log"
        http, running = start_piper(log, "--registry", self.redis.url, *self.worker_args, auth=False, port=port)
        url = http.replace("http://", "ws://") + "/v1/stream"
        self.processes[url] = await asyncio.to_thread(self.stack.enter_context, running)
        return url

    async def stop(self, url: str, sig: int = signal.SIGTERM) -> float:
        """Signal a worker and wait for it to exit; returns how long that took."""
        sent = time.monotonic()
        self.processes[url].send_signal(sig)
        await asyncio.to_thread(self.processes[url].wait, 60)
        return time.monotonic() - sent

    async def registered(self, url: str, since: float, secs: float = 60.0) -> float | None:
        """When (monotonic) a ready entry for ``url`` written after ``since`` was first seen (polled every
        20 ms); None if none within ``secs``."""
        boots = {e.boot_id for e in await self.directory.workers(JOE) if e.url == url}
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            for e in await self.directory.workers(JOE):
                if e.url == url and e.state == "ready" and e.boot_id not in boots:
                    return time.monotonic()
            await asyncio.sleep(0.02)
        return None

    async def restart(self, url: str, sig: int = signal.SIGTERM) -> dict:
        """Stop a worker, start it again on its port, wait until it is registered: seconds of each step."""
        exit_secs = await self.stop(url, sig)
        started = time.monotonic()
        waiting = asyncio.create_task(self.registered(url, started))
        await self.start(port=int(url.rsplit(":", 1)[1].split("/")[0]))
        registered = await waiting
        return {"exit_secs": round(exit_secs, 2), "registered_secs": registered and round(registered - started, 2)}

    async def sessions(self, client: httpx.AsyncClient) -> dict[str, int]:
        """Every live worker's ``active_sessions`` from its /health."""
        out = {}
        for url, process in self.processes.items():
            if process.poll() is None:
                with contextlib.suppress(httpx.HTTPError):
                    health = url.removesuffix("/v1/stream").replace("ws://", "http://") + "/health"
                    out[url] = (await client.get(health, timeout=2)).json()["active_sessions"]
        return out

    async def busiest(self) -> str:
        """The live worker holding the most sessions."""
        async with httpx.AsyncClient() as client:
            sessions = await self.sessions(client)
        return max(sessions, key=sessions.get)

    async def close(self) -> None:
        """Close the registry client (the processes stop with the stack)."""
        await self.directory.close()


@dataclass
class Calls:
    """Callers speaking replies until :meth:`finish`; what they heard."""

    registry: str
    pause: float = 1.0
    reply: list[str] = field(default_factory=lambda: REPLY)
    replies: list[Reply] = field(default_factory=list)
    sockets: list[list[tuple[float, str]]] = field(default_factory=list)  # each call's connects (not the
    # call itself: a finished call's pipeline must be freed, or the soak measures this list)
    dropped: int = 0  # the TTS gave up (unusable) or the call failed
    failed_to_start: int = 0
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task] = field(default_factory=list)
    _waiting: list[tuple[str | None, asyncio.Future]] = field(default_factory=list)

    def next_first_audio(self, worker: str | None = None) -> asyncio.Future:
        """Resolves with the worker's URL at the next reply's first audio (from ``worker``, if given): the
        moment a worker is mid-reply, with the reply's other sentences queued on it."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((worker, future))
        return future

    def _first_audio(self, url: str) -> None:
        for waiting in [w for w in self._waiting if w[0] in (None, url)]:
            self._waiting.remove(waiting)
            if not waiting[1].done():
                waiting[1].set_result(url)

    def place(self, replies: int | None = None) -> None:
        """A new call: ``replies`` replies (None: until :meth:`finish`), then it hangs up."""
        self.tasks.append(asyncio.create_task(self.call(replies)))

    async def call(self, replies: int | None) -> None:
        """One call, in this task."""
        try:
            async with Conversation(PiperWorkerTTSService, self.registry, JOE) as call:
                self.sockets.append(call.connects)
                if not call.connects:
                    self.failed_to_start += 1
                said = 0
                while not self.stopping.is_set() and (replies is None or said < replies):
                    reply = await call.say(self.reply, lambda call=call: self._first_audio(call.tts.worker_url))
                    said += 1
                    self.replies.append(reply)
                    if not call.tts.is_usable:
                        self.dropped += 1
                        return
                    # The caller hears the reply in real time, then answers.
                    played = reply.chunks[0][0] + reply.audio_secs if reply.chunks else time.monotonic()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), max(0.0, played - time.monotonic()) + self.pause)
        except Exception as e:
            logger.error(f"call failed: {e!r}")
            self.dropped += 1

    async def finish(self) -> None:
        """Let every call end its reply in progress, then hang up."""
        self.stopping.set()
        await self.wait()

    async def wait(self) -> None:
        """Wait for every call to hang up by itself (calls of a set number of replies)."""
        await asyncio.gather(*self.tasks)

    def connects(self) -> list[tuple[float, str]]:
        """(when, worker URL) of every socket any call opened."""
        return sorted(c for connects in self.sockets for c in connects)

    def summary(self) -> dict:
        """Calls, drops, and what their replies sounded like."""
        return {"calls": len(self.tasks), "calls_dropped": self.dropped, **replies_heard(self.replies)}


REFERENCE_SECS = [0.0]
"""Audio of an undisturbed reply (measured first): a reply heard shorter lost sentences."""


async def reference_secs(registry: str) -> float:
    """Seconds of audio of an undisturbed :data:`REPLY`."""
    heard, _ = await speak_reply(PiperWorkerTTSService, registry, JOE, sentences=REPLY)
    return round(heard.audio_secs, 2)


def lost(reply: Reply) -> int:
    """Sentences lost: not finished by any worker, or not heard (the audio missing, at the reference's mean
    sentence length: a finished sentence whose audio arrived after pipecat ended the reply is lost too)."""
    sentence_secs = REFERENCE_SECS[0] / len(REPLY)
    missing = round(max(0.0, REFERENCE_SECS[0] - reply.audio_secs) / sentence_secs) if sentence_secs else 0
    return max(reply.sentences_lost, missing)


def replies_heard(replies: list[Reply]) -> dict:
    """Replies, sentences lost, replies another worker finished, silence heard inside them (ms)."""
    silences = [longest_silence_secs(r.chunks) * 1000 for r in replies]
    return {
        "replies": len(replies),
        "replies_unfinished": sum(not r.finished for r in replies),
        "sentences_lost": sum(lost(r) for r in replies),
        "replies_moved_to_another_worker": sum(len(r.workers) > 1 for r in replies),
        "silence_heard_ms": {
            "p50": percentile(silences, 0.5),
            "p95": percentile(silences, 0.95),
            "max": round(max(silences, default=0.0), 1),
        },
    }


def in_flight(replies: list[Reply], at: float) -> list[Reply]:
    """The replies being generated or played at ``at``."""
    return [r for r in replies if r.sent_at <= at and (not r.chunks or r.chunks[-1][0] >= at or not r.finished)]


@contextlib.asynccontextmanager
async def calling(registry: str, count: int, *, pause: float, stagger: float = 2.5, warmup: float = 4.0):
    """``count`` calls placed ``stagger`` s apart, speaking until the block ends; yields them after ``warmup``."""
    calls = Calls(registry, pause=pause)
    for _ in range(count):
        calls.place()
        await asyncio.sleep(stagger)
    await asyncio.sleep(warmup)
    try:
        yield calls
    finally:
        await calls.finish()


# --- parts ------------------------------------------------------------------------------------------


async def routing(directory: WorkerDirectory, picks: int = 2000) -> dict:
    """p50/p99 of ``pick``."""
    times = []
    for _ in range(picks):
        started = time.perf_counter()
        assert await directory.pick(JOE) is not None
        times.append((time.perf_counter() - started) * 1000)
    return {"picks": picks, "p50_ms": percentile(times, 0.5), "p99_ms": percentile(times, 0.99)}


async def simulated(redis_url: str, count: int) -> list[Registration]:
    """``count`` registered entries that no process serves (never picked by calls: no such voice)."""
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


async def part_routing(fleet: Fleet) -> dict:
    """Routing with the real workers, then with 100 simulated entries more; the registry's memory."""
    real = len(await fleet.directory.workers(JOE))
    result = {f"routing_{real}_workers": await routing(fleet.directory)}
    fake = await simulated(fleet.redis.url, 100)
    result[f"routing_{real + 100}_workers"] = await routing(fleet.directory)
    redis_client = fleet.directory._redis
    result["registry_bytes_100_workers"] = sum(
        [await redis_client.memory_usage(worker.key) for worker in fake]
    ) + await redis_client.memory_usage(family_index("piper"))
    for worker in fake:
        await worker.stop()
    return result


async def part_failover(fleet: Fleet, kills: int) -> dict:
    """The worker speaking a reply killed at its first audio, ``kills`` times (restarted after)."""
    reference, _ = await speak_reply(PiperWorkerTTSService, fleet.redis.url, JOE)
    gaps, complete, moved = [], 0, 0
    for _ in range(kills):
        heard, first = await speak_reply(
            PiperWorkerTTSService, fleet.redis.url, JOE, on_first_audio=lambda url: fleet.processes[url].kill()
        )
        gaps.append(longest_silence_secs(heard.chunks) * 1000)
        complete += heard.audio_secs >= 0.9 * reference.audio_secs
        moved += any(worker not in (None, first) for _, _, worker in heard.chunks)
        await fleet.restart(first, signal.SIGKILL)  # as an orchestrator would, on its port
    return {
        "kills": kills,
        "longest_silence_heard_ms": {
            "undisturbed": round(longest_silence_secs(reference.chunks) * 1000, 1),
            "p50": percentile(gaps, 0.5),
            "p95": percentile(gaps, 0.95),
            "max": round(max(gaps), 1),
        },
        "replies_finished_by_another_worker": moved,
        "replies_complete": complete,
        "replies_dropped": kills - complete,
    }


async def mid_reply(calls: Calls, worker: str | None = None, secs: float = 30.0) -> str | None:
    """The worker speaking the next reply (``worker`` only), at its first audio; None if none came."""
    try:
        return await asyncio.wait_for(calls.next_first_audio(worker), secs)
    except TimeoutError:
        return None


async def part_drain(fleet: Fleet, calls_n: int, drains: int, pause: float) -> dict:
    """A worker drained (SIGTERM) at a reply's first audio under calls, ``drains`` times, restarted after."""
    signalled, restarts = [], []
    async with calling(fleet.redis.url, calls_n, pause=pause) as calls:
        for _ in range(drains):
            url = await mid_reply(calls) or await fleet.busiest()
            signalled.append(time.monotonic())
            restarts.append(await fleet.restart(url))
            await asyncio.sleep(2)
    affected = list({id(r): r for at in signalled for r in in_flight(calls.replies, at)}.values())
    return {
        **calls.summary(),
        "drains": drains,
        "replies_in_flight_at_sigterm": replies_heard(affected),
        "worker_exit_after_sigterm_secs": [r["exit_secs"] for r in restarts],
    }


async def part_rolling(fleet: Fleet, calls_n: int, pause: float) -> dict:
    """Every worker restarted in turn (SIGTERM at a reply's first audio on it, exit, start, registered)
    under calls."""
    steps, signalled = [], []
    started = time.monotonic()
    async with calling(fleet.redis.url, calls_n, pause=pause) as calls:
        for url in [u for u, p in fleet.processes.items() if p.poll() is None]:
            mid = await mid_reply(calls, url, secs=20)
            signalled.append(time.monotonic())
            steps.append({"mid_reply": mid is not None, **await fleet.restart(url)})
        took = time.monotonic() - started
    affected = list({id(r): r for at in signalled for r in in_flight(calls.replies, at)}.values())
    return {
        **calls.summary(),
        "workers_restarted": len(steps),
        "restart_steps": steps,
        "rolling_secs": round(took, 1),
        "replies_in_flight_at_sigterm": replies_heard(affected),
    }


async def part_redis(fleet: Fleet, calls_n: int, pause: float) -> dict:
    """redis-server restarted empty on its port under calls."""
    workers = len(await fleet.directory.workers(JOE))
    async with calling(fleet.redis.url, calls_n, pause=pause) as calls:
        down = time.monotonic()
        await asyncio.to_thread(fleet.redis.restart)
        up = time.monotonic()
        while True:  # the directory's client reconnects by itself
            with contextlib.suppress(Exception):
                if len(await fleet.directory.workers(JOE)) == workers:
                    break
            await asyncio.sleep(0.02)
        all_back = time.monotonic()
        while True:
            with contextlib.suppress(Exception):
                if await fleet.directory.pick(JOE) is not None:
                    break
            await asyncio.sleep(0.02)
        routable = time.monotonic()
        async with Conversation(PiperWorkerTTSService, fleet.redis.url, JOE) as new_call:
            connected = new_call.connects[0][0] if new_call.connects else None
            new_reply = await new_call.say(REPLY)
        await asyncio.sleep(3)
    return {
        **calls.summary(),
        "workers": workers,
        "redis_down_secs": round(up - down, 3),
        "every_worker_registered_secs_after_restart": round(all_back - up, 3),
        "new_call_routable_secs_after_restart": round(routable - up, 3),
        "new_call_connected_secs_after_restart": connected and round(connected - up, 3),
        "new_call_reply_finished": new_reply.finished,
    }


async def part_join(fleet: Fleet, joins: int, pause: float) -> dict:
    """Calls placed every 0.5 s (one reply each); a worker started: registration -> its first session."""
    calls = Calls(fleet.redis.url, pause=pause)
    stop = asyncio.Event()

    async def place() -> None:
        while not stop.is_set():
            calls.place(replies=1)
            await asyncio.sleep(0.5)

    placing = asyncio.create_task(place())
    await asyncio.sleep(5)
    trials = []
    for _ in range(joins):
        since = time.monotonic()
        port = free_port()
        url = f"ws://127.0.0.1:{port}/v1/stream"
        waiting = asyncio.create_task(fleet.registered(url, since))
        await fleet.start(port=port)
        registered = await waiting
        deadline = time.monotonic() + 20
        first = None
        while first is None and time.monotonic() < deadline:
            first = next((at for at, worker in calls.connects() if worker == url and at >= registered), None)
            await asyncio.sleep(0.05)
        trials.append(round(first - registered, 3) if first else None)
    stop.set()
    await placing
    await calls.wait()
    return {
        "calls": len(calls.tasks),
        "calls_dropped": calls.dropped,
        "replies_unfinished": sum(not r.finished for r in calls.replies),
        "joins": joins,
        "registration_to_first_session_secs": trials,
    }


async def part_admission(fleet: Fleet, rounds: int, max_sessions: int, pause: float) -> dict:
    """As many callers as slots, all at once, ``rounds`` times; /health polled every 50 ms."""
    workers = [u for u, p in fleet.processes.items() if p.poll() is None]
    peak: dict[str, int] = dict.fromkeys(workers, 0)
    stop = asyncio.Event()

    async def poll() -> None:
        async with httpx.AsyncClient() as client:
            while not stop.is_set():
                for url, active in (await fleet.sessions(client)).items():
                    peak[url] = max(peak[url], active)
                await asyncio.sleep(0.05)

    polling = asyncio.create_task(poll())
    calls = Calls(fleet.redis.url, pause=pause)
    for _ in range(rounds):
        batch = Calls(fleet.redis.url, pause=pause)
        for _ in range(len(workers) * max_sessions):
            batch.place(replies=2)
        await batch.wait()
        calls.tasks += batch.tasks
        calls.replies += batch.replies
        calls.sockets += batch.sockets
        calls.dropped += batch.dropped
        await asyncio.sleep(2)  # every session closed, and the registry says so
    stop.set()
    await polling
    return {
        **calls.summary(),
        "workers": len(workers),
        "max_sessions": max_sessions,
        "most_sessions_seen_on_a_worker": max(peak.values()),
        "over_admitted": max(peak.values()) > max_sessions,
        "calls_that_moved_after_a_refusal": sum(len(connects) > 1 for connects in calls.sockets),
    }


async def commandstats(redis_client) -> dict[str, int]:
    """Calls per command so far (``INFO commandstats``)."""
    info = await redis_client.info("commandstats")
    return {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in info.items()}


async def part_traffic(fleet: Fleet, calls_n: int, pause: float) -> dict:
    """Commands per call (agents) and per second (workers' refresh), from ``INFO commandstats``."""
    redis_client = fleet.directory._redis
    before, started = await commandstats(redis_client), time.monotonic()
    calls = Calls(fleet.redis.url, pause=pause)
    for _ in range(calls_n):  # a few at a time: a loaded worker answers late (see bench/README.md)
        calls.place(replies=1)
        await asyncio.sleep(1.5)
    await calls.wait()
    after, secs = await commandstats(redis_client), time.monotonic() - started
    delta = {name: n - before.get(name, 0) for name, n in after.items() if n - before.get(name, 0)}
    delta.pop("info", None)  # ours
    agents = {name: n for name, n in delta.items() if name not in WORKER_COMMANDS}
    workers_n = sum(p.poll() is None for p in fleet.processes.values())
    refresh = sum(n for name, n in delta.items() if name in WORKER_COMMANDS)
    return {
        "calls": calls_n,
        "calls_dropped": calls.dropped,
        "agent_commands_per_call": round(sum(agents.values()) / calls_n, 2),
        "agent_commands_per_call_by_name": {name: round(n / calls_n, 2) for name, n in sorted(agents.items())},
        "workers": workers_n,
        "worker_refresh_commands_per_sec": round(refresh / secs, 1),
        "worker_refresh_commands_per_sec_per_worker": round(refresh / secs / workers_n, 2),
    }


# --- running ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def bench_logs(logs: Path) -> Iterator[None]:
    """The agents' log to a file (failovers warn loudly), errors still on stderr."""
    logger.remove()
    logger.add(logs / "agents.log", level="INFO")
    logger.add(sys.stderr, level="ERROR")
    yield


PARTS = ("traffic", "routing", "failover", "drain", "rolling", "redis", "join", "admission")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}")
    parser.add_argument("--kills", type=int, default=20, help="failover: workers killed mid-reply")
    parser.add_argument("--calls", type=int, default=4, help="drain, rolling, redis, traffic: concurrent calls")
    parser.add_argument("--drains", type=int, default=3, help="drain: workers drained one after another")
    parser.add_argument("--joins", type=int, default=2, help="join: workers started under calls")
    parser.add_argument("--rounds", type=int, default=3, help="admission: bursts of callers")
    parser.add_argument("--pause", type=float, default=10.0, help="the caller's answer between replies (s)")
    args = parser.parse_args()
    parts = [p for p in args.only.split(",") if p]
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    result: dict = {"parts": parts, "calls": args.calls}
    logs = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    result["logs"] = str(logs)
    with bench_logs(logs), RedisServer().running() as redis, contextlib.ExitStack() as stack:
        fleet = Fleet(redis, logs, stack)
        count = 3
        if set(parts) - {"admission"}:
            await asyncio.gather(*(fleet.start() for _ in range(count)))
            await entries_when(fleet.directory, lambda e: len(e) == count, secs=20)
        REFERENCE_SECS[0] = result["reference_reply_audio_secs"] = await reference_secs(redis.url)
        for part in [p for p in PARTS if p in parts and p != "admission"]:
            started = time.monotonic()
            if part == "traffic":
                result[part] = await part_traffic(fleet, 10, args.pause)
            elif part == "routing":
                result.update(await part_routing(fleet))
            elif part == "failover":
                result[part] = await part_failover(fleet, args.kills)
            elif part == "drain":
                result[part] = await part_drain(fleet, args.calls, args.drains, args.pause)
            elif part == "rolling":
                result[part] = await part_rolling(fleet, args.calls, args.pause)
            elif part == "redis":
                result[part] = await part_redis(fleet, args.calls, args.pause)
            elif part == "join":
                result[part] = await part_join(fleet, args.joins, args.pause)
            result.setdefault("part_secs", {})[part] = round(time.monotonic() - started, 1)
            print(json.dumps({part: result.get(part)}), file=sys.stderr, flush=True)
        await fleet.close()
    if "admission" in parts:  # workers of its own, with few slots
        with RedisServer().running() as redis, contextlib.ExitStack() as stack:
            fleet = Fleet(redis, logs, stack, "--max-sessions", "2")
            await asyncio.gather(*(fleet.start() for _ in range(3)))
            await entries_when(fleet.directory, lambda e: len(e) == 3, secs=20)
            if not REFERENCE_SECS[0]:
                REFERENCE_SECS[0] = result["reference_reply_audio_secs"] = await reference_secs(redis.url)
            started = time.monotonic()
            result["admission"] = await part_admission(fleet, args.rounds, 2, args.pause)
            result.setdefault("part_secs", {})["admission"] = round(time.monotonic() - started, 1)
            await fleet.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
