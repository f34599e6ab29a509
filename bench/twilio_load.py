"""Phone-path load and barge-in: many simulated Twilio calls against `vivavoce serve`. Prints JSON.

    .venv/bin/python bench/twilio_load.py [--calls 10,20,30,40,50,60] [--bargein-runs 20]

The server runs in its own process (`vivavoce serve bots/twilio_load.yaml`: Silero VAD, a silence
end-of-turn, and a pre-synthesised reply). Each simulated caller (Twilio's documented Media Streams
messages, 160-byte mu-law frames every 20 ms) says a phrase of real speech and listens to the reply,
twice. Per level of concurrency: p99 gap between outbound media frames within a reply (a reply ends at
its `mark`), frames dropped against the reply's length, and server memory per call. Then barge-in:
the caller talks over the reply; caller speech onset -> `clear` received.

Both sides share this machine's cores: the figures are a lower bound for the server alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import soxr
import uvloop

from stats import percentile
from vivavoce.packaged_models import speech_sample
from vivavoce.samples import conversation, find_phrases
from vivavoce.testing.media_streams import FRAME_SECS, MediaStreamsCaller, call_sid
from vivavoce.testing.processes import free_port, serving
from vivavoce.wav import read_wav

REPO = Path(__file__).resolve().parents[1]
BOT = REPO / "bots" / "twilio_load.yaml"
VAD_START_SECS = 0.2


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the serving processes of `--workers N`)."""
    tree, i = [pid], 0
    while i < len(tree):
        for task in Path(f"/proc/{tree[i]}/task").glob("*/children"):
            tree += [int(c) for c in task.read_text().split()]
        i += 1
    return tree


def rss_mb(pid: int) -> float:
    """Resident memory of the server, all its processes."""
    total = 0.0
    for member in process_tree(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def cpu_secs(pid: int) -> float:
    """CPU time used so far by the server, all its processes."""
    total = 0
    for member in process_tree(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def phrase_8k() -> tuple[np.ndarray, float]:
    """"Ever tried." from the bundled real-speech recording at 8 kHz, and when its speech begins (s)."""
    audio = conversation(gap_secs=0.0)
    pcm = audio.pcm[int(0.4 * audio.sample_rate) : int(1.6 * audio.sample_rate)]
    pcm = to_8k(pcm)
    frames = pcm[: len(pcm) // 160 * 160].reshape(-1, 160).astype(np.float64)
    loud = np.sqrt((frames**2).mean(axis=1)) > 500
    return pcm, float(np.argmax(loud)) * FRAME_SECS


def to_8k(pcm_16k: np.ndarray) -> np.ndarray:
    """16 kHz -> 8 kHz, as the phone network does."""
    return soxr.resample(pcm_16k, 16000, 8000).astype(np.int16)


async def expected_reply_frames(bot: Path = BOT) -> int:
    """How many 20 ms frames of audio the bot's recorded reply is at 8 kHz: fewer received is a loss."""
    from pipecat.audio.utils import create_file_resampler

    from vivavoce.botfile import load_bot
    from vivavoce.processors.playback import recorded_reply

    reply = load_bot(bot).stage("s2s").config
    pcm, rate = recorded_reply(reply.text, reply.audio, reply.voice)
    at_8k = await create_file_resampler().resample(pcm, rate, 8000)
    return -(-len(at_8k) // 320)  # 2 bytes a sample, 160 samples a frame; a last partial frame still goes out


@functools.cache
def webhook_client() -> httpx.AsyncClient:
    """One client for every simulated call's webhook: a client per call cost the callers an SSL context each."""
    return httpx.AsyncClient(timeout=30)


async def token_for(base: str, sid: str) -> str:
    """The stream token from the TwiML the webhook answers for call ``sid``."""
    reply = await webhook_client().post(f"{base}/twilio/voice", data={"CallSid": sid, "From": "+15550001111"})
    twiml = reply.text
    return re.search(r'name="token" value="([^"]+)"', twiml).group(1)


async def one_call(base: str, ws: str, phrase: np.ndarray, rounds: int, reply_frames: int) -> dict:
    sid = call_sid()
    caller = MediaStreamsCaller(ws, token=await token_for(base, sid), call=sid)
    gaps, dropped, counts = [], 0, []
    async with caller:
        for _ in range(rounds):
            await caller.silence(0.3)
            await caller.speak(phrase)
            spoke_at = time.monotonic()
            await caller.silence(0.2)
            # Keep the line open (silence) until this reply's mark comes back, like a phone.
            deadline = spoke_at + 15
            marks_before = sum(1 for _, m in caller.events if m.get("event") == "mark")
            while time.monotonic() < deadline:
                await caller.silence(0.1)
                if sum(1 for _, m in caller.events if m.get("event") == "mark") > marks_before:
                    break
            marks = [t for t, m in caller.events if m.get("event") == "mark"]
            if len(marks) <= marks_before:
                continue  # no reply within the deadline: counted as missing
            mark_at = marks[-1]
            frames = [t for t, _ in caller.received.frames if spoke_at <= t <= mark_at]
            if frames:
                counts.append(len(frames))
                gaps += [(b - a) * 1000 for a, b in zip(frames, frames[1:], strict=False)]
                dropped += max(0, reply_frames - len(frames))
    return {"gaps": gaps, "dropped": dropped, "replies": len(counts), "frames": counts}


async def bargein_run(base: str, ws: str, phrase: np.ndarray, speech_offset: float) -> float | None:
    sid = call_sid()
    caller = MediaStreamsCaller(ws, token=await token_for(base, sid), call=sid)
    async with caller:
        await caller.silence(0.3)
        await caller.speak(phrase)
        spoke_at = time.monotonic()
        while not any(t > spoke_at for t, _ in caller.received.frames):
            await caller.silence(0.02)
            if time.monotonic() - spoke_at > 10:
                return None
        await caller.silence(0.4)  # the reply is playing
        onset = await caller.speak(phrase) + speech_offset
        await caller.silence(0.5)
        cleared = caller.first_event("clear", after=onset)
    return None if cleared is None else (cleared - onset) * 1000


def start_server(port: int, bot: Path = BOT, workers: int = 1) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """`vivavoce serve BOT --workers N` on ``port`` until the block ends (ready within 120 s)."""
    env = {
        **os.environ,
        "VIVAVOCE_PUBLIC_URL": f"https://127.0.0.1:{port}",
        "VIVAVOCE_LOG_LEVEL": "ERROR",
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": "",  # no REST calls (hang-up) from the benchmark
    }
    return serving(
        [sys.executable, "-m", "vivavoce.cli", "serve", str(bot), "--port", str(port), "--insecure-skip-signature",
         "--workers", str(workers)],
        health=f"http://127.0.0.1:{port}/health",
        env=env,
        ready_secs=120,
        poll_secs=0.5,
        health_timeout=1,
        stop_secs=30,
    )


async def phone_voice_to_voice(turns: int) -> dict:
    """The embedded agent (bots/twilio.yaml) over the phone path: speech end -> first reply media frame."""
    port = free_port()
    base, ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/twilio/ws"
    recording = read_wav(speech_sample())

    phrases = find_phrases(recording.pcm)[:turns]
    latencies = []
    with start_server(port, REPO / "bots" / "twilio.yaml"):
        sid = call_sid()
        caller = MediaStreamsCaller(ws, token=await token_for(base, sid), call=sid)
        async with caller:
            await caller.silence(4.0)  # the greeting
            for phrase in phrases:
                pcm = to_8k(recording.pcm[phrase.start : phrase.end])
                frames = pcm[: len(pcm) // 160 * 160].reshape(-1, 160).astype(np.float64)
                loud = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > 500)
                started = await caller.speak(pcm)
                stopped = started + (loud[-1] + 1) * FRAME_SECS if len(loud) else started
                await caller.silence(6.0)
                reply = next((t for t, _ in caller.received.frames if t > stopped), None)
                if reply is not None:
                    latencies.append((reply - stopped) * 1000)
    return {
        "turns": len(latencies),
        "p50": percentile(latencies, 50),
        "p90": percentile(latencies, 90),
        "max": percentile(latencies, 100),
    }


async def main_async(levels: list[int], rounds: int, bargein_runs: int, v2v_turns: int, workers: int) -> dict:
    port = free_port()
    base, ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/twilio/ws"
    phrase, speech_offset = phrase_8k()
    with start_server(port, workers=workers) as server:
        # One call first: the bot must answer before a load figure means anything.
        probe = await one_call(base, ws, phrase, 1, 0)
        if not probe["frames"]:
            raise RuntimeError("the bot did not answer the probe call")
        reply_frames = await expected_reply_frames()
        results, idle_rss = [], rss_mb(server.pid)
        for calls in levels:
            peak = [idle_rss]

            async def sample_memory(peak: list[float] = peak) -> None:
                while True:
                    peak[0] = max(peak[0], rss_mb(server.pid))
                    await asyncio.sleep(0.25)

            sampler = asyncio.create_task(sample_memory())
            started, cpu_before, callers_before = time.monotonic(), cpu_secs(server.pid), time.process_time()
            outcomes = await asyncio.gather(*(one_call(base, ws, phrase, rounds, reply_frames) for _ in range(calls)))
            sampler.cancel()
            elapsed = time.monotonic() - started
            cpu_share = (cpu_secs(server.pid) - cpu_before) / elapsed
            gaps = [g for o in outcomes for g in o["gaps"]]
            result = {
                "calls": calls,
                "replies": sum(o["replies"] for o in outcomes),
                "replies_expected": calls * rounds,
                "gap_p50_ms": percentile(gaps, 50),
                "gap_p99_ms": percentile(gaps, 99),
                "gap_max_ms": percentile(gaps, 100),
                "dropped_frames": sum(o["dropped"] for o in outcomes),
                "memory_per_call_mb": round((peak[0] - idle_rss) / calls, 1),
                "server_cpu_per_call_pct": round(100 * cpu_share / calls, 2),
                "server_cores": round(cpu_share, 2),
                # The simulated callers run here too and compete with the server for the same cores.
                "callers_cores": round((time.process_time() - callers_before) / elapsed, 2),
                "wall_s": round(elapsed, 1),
            }
            result["ok"] = bool(
                result["gap_p99_ms"] is not None
                and result["gap_p99_ms"] <= 40
                and result["dropped_frames"] == 0
                and result["replies"] == result["replies_expected"]
            )
            results.append(result)
            print(json.dumps(result), file=sys.stderr)
        # One call at a time: a latency figure, not a load one.
        bargein = [
            ms for _ in range(bargein_runs) if (ms := await bargein_run(base, ws, phrase, speech_offset)) is not None
        ]
    passing = [r["calls"] for r in results if r["ok"]]
    v2v = await phone_voice_to_voice(v2v_turns) if v2v_turns else None
    return {
        "phone_voice_to_voice_ms": v2v,
        "benchmark": "twilio_load",
        "bot": str(BOT.relative_to(REPO)),
        "machine": {"cpus": os.cpu_count()},
        "server_processes": workers,
        "reply_frames": reply_frames,
        "levels": results,
        "max_calls_within_targets": max(passing) if passing else 0,
        "targets": {"gap_p99_ms": 40, "dropped_frames": 0, "calls": 50, "bargein_p95_ms": VAD_START_SECS * 1000 + 60},
        "bargein_clear_ms": {
            "runs": len(bargein),
            "p50": percentile(bargein, 50),
            "p95": percentile(bargein, 95),
            "max": percentile(bargein, 100),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", default="10,15,20,25,30,40,50", help="concurrency levels, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="phrases each caller says")
    parser.add_argument("--bargein-runs", type=int, default=20)
    parser.add_argument("--v2v-turns", type=int, default=6, help="turns with the embedded models (0: skip)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server processes (serve --workers)")
    args = parser.parse_args()
    levels = [int(x) for x in args.calls.split(",")]
    # The callers share the machine with the server: the cheaper their event loop, the truer the figures.
    print(
        json.dumps(
            uvloop.run(main_async(levels, args.rounds, args.bargein_runs, args.v2v_turns, args.workers)), indent=2
        )
    )


if __name__ == "__main__":
    main()
