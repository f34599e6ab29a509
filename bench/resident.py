"""The workers' model manager on a real Piper worker: what a voice that is not resident costs its first request,
and the memory each resident voice takes (prints JSON).

    python bench/resident.py                 # make worker-piper first
    python bench/resident.py --rounds 20

Only one Piper voice ships in a package, so the other voices are copies of en_US-joe-medium under other names:
each loads as its own ONNX session (a real load, real memory), as a distinct voice of the same size would.

- Cold vs resident: a worker with ``--resident-cap 1 --min-residency-secs 0`` and two voices, asked for them
  in turn over ``/v1/stream``: every request finds its voice evicted and loads it (ONNX session + one warm-up
  sentence), then the same voice is asked again (resident). Per request: the time from ``synthesize`` to the
  first audio byte, and ``voice_load_ms`` from ``done`` (the wait for the load).
- Memory: a worker with ``--resident-cap 3`` and four voices; its RSS (``/health``) once 1, 2 and 3 voices are
  resident (each used once), then after a fourth voice evicts one, and after ``--cycles`` more loads and
  evictions (whether evicted voices give their memory back).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import websockets

from vivavoce.packaged_models import piper_voice
from vivavoce.testing.processes import free_port, serving

REPO = Path(__file__).resolve().parents[1]
PIPER_PYTHON = REPO / "workers" / "piper" / ".venv" / "bin" / "python"
TEXT = "Your table for two is booked for seven tonight."


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="cold and resident requests to time")
    parser.add_argument("--cycles", type=int, default=10, help="extra loads and evictions before the last RSS")
    return parser.parse_args()


def copies(folder: Path, names: list[str]) -> None:
    joe = piper_voice()
    for name in names:
        shutil.copy(joe, folder / f"{name}.onnx")
        shutil.copy(f"{joe}.json", folder / f"{name}.onnx.json")


@contextlib.contextmanager
def piper(log: Path, *args: str):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(PIPER_PYTHON), "-m", "vivavoce_piper", *args, "--port", str(port), "--no-auth"]
    with serving(command, health=f"{url}/health", cwd=REPO, log=log, ready_secs=120, env={**os.environ}):
        yield url


async def say(url: str, voice: str) -> dict:
    """One ``/v1/stream`` request: ms to its first audio byte, and its ``done``."""
    async with websockets.connect(url.replace("http://", "ws://") + "/v1/stream") as ws:
        sent = time.perf_counter()
        await ws.send(json.dumps({"type": "synthesize", "id": "b", "text": TEXT, "voice": voice}))
        first = None
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                first = first or time.perf_counter()
                continue
            reply = json.loads(message)
            if reply["type"] == "error":
                raise RuntimeError(reply)
            if reply["type"] == "done":
                return {"first_audio_ms": (first - sent) * 1000, "voice_load_ms": reply.get("voice_load_ms")}


def spread(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 1),
        "p95": round(float(np.percentile(values, 95)), 1),
        "max": round(max(values), 1),
    }


def rss_mb(url: str) -> float:
    return round(httpx.get(f"{url}/health").json()["memory"]["rss_bytes"] / 2**20, 1)


async def cold_vs_resident(tmp: Path, rounds: int) -> dict:
    folder = tmp / "turns"
    folder.mkdir()
    copies(folder, ["a", "b"])
    args = ["--voices-dir", str(folder), "--resident-cap", "1", "--min-residency-secs", "0"]
    with piper(tmp / "turns.log", *args) as url:
        await say(url, "en_US-joe-medium")  # the process's own first request
        cold, warm = [], []
        for i in range(rounds):
            voice = "ab"[i % 2]  # the other voice was the resident one: this one loads
            cold.append(await say(url, voice))
            warm.append(await say(url, voice))
        health = httpx.get(f"{url}/health").json()
    assert all(c["voice_load_ms"] for c in cold) and not any(w["voice_load_ms"] for w in warm)
    return {
        "rounds": rounds,
        "cold_first_audio_ms": spread([c["first_audio_ms"] for c in cold]),
        "cold_voice_load_ms": spread([c["voice_load_ms"] for c in cold]),
        "resident_first_audio_ms": spread([w["first_audio_ms"] for w in warm]),
        "worker_load_ms": spread([e["load_ms"] for e in health["model_events"] if e["event"] == "load"]),
        "loads": health["loads"],
        "evictions": health["evictions"],
    }


async def memory(tmp: Path, cycles: int) -> dict:
    folder = tmp / "memory"
    folder.mkdir()
    copies(folder, ["v2", "v3", "v4"])
    args = ["--voices-dir", str(folder), "--resident-cap", "3", "--min-residency-secs", "0"]
    with piper(tmp / "memory.log", *args) as url:
        await say(url, "en_US-joe-medium")
        figures = {"rss_mb_1_voice": rss_mb(url)}
        await say(url, "v2")
        figures["rss_mb_2_voices"] = rss_mb(url)
        await say(url, "v3")
        figures["rss_mb_3_voices"] = rss_mb(url)
        await say(url, "v4")  # evicts the least recently used
        figures["rss_mb_3_voices_after_1_eviction"] = rss_mb(url)
        order = ["en_US-joe-medium", "v2", "v3", "v4"]
        for i in range(cycles):  # each asks for the voice evicted last: a load and an eviction every time
            await say(url, order[i % 4])
        figures[f"rss_mb_3_voices_after_{cycles + 1}_evictions"] = rss_mb(url)
        health = httpx.get(f"{url}/health").json()
        figures["resident"] = [r["id"] for r in health["resident"]]
        figures["evictions"] = health["evictions"]
    figures["voice_file_mb"] = round(piper_voice().stat().st_size / 2**20, 1)
    return figures


async def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-resident-") as tmp:
        out = {
            "cold_vs_resident": await cold_vs_resident(Path(tmp), args.rounds),
            "memory": await memory(Path(tmp), args.cycles),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
