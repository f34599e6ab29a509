"""Voice-to-voice latency of the embedded local bot, and its cold start. Prints JSON.

    .venv/bin/python bench/local_latency.py [--runs 2] [--bot bots/local.yaml]

Latency: the bot hears the bundled real-speech conversation (six turns of beckett.wav, re-spaced) through
the file transport, paced in real time; per turn, user stops speaking -> first bot audio leaves the
transport, split into stages. Cold start: a fresh `vivavoce run` process, from launch until it prints
that it is listening (models loaded and warmed up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vivavoce.realtime_env import apply_realtime_env

apply_realtime_env()

from vivavoce.botfile import load_bot  # noqa: E402
from vivavoce.builder import load_models  # noqa: E402
from vivavoce.file_session import run_on_recording  # noqa: E402
from vivavoce.samples import conversation  # noqa: E402
from vivavoce.turns import summarize  # noqa: E402
from vivavoce.wav import write_wav  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def cold_start_secs(bot: Path) -> float:
    """Seconds from process launch until `vivavoce run` says it is listening."""
    with tempfile.TemporaryDirectory() as tmp:
        silence = Path(tmp) / "silence.wav"
        import numpy as np

        write_wav(silence, np.zeros(8000, dtype=np.int16), 16000)
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "vivavoce.cli", "run", str(bot), "--input", str(silence)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        assert process.stderr is not None
        ready = None
        for line in process.stderr:
            if "listening" in line and ready is None:
                ready = time.perf_counter() - started
        process.wait(timeout=120)
        if ready is None:
            raise RuntimeError("the bot never reported that it was listening")
        return ready


async def latency(bot_path: Path, runs: int) -> dict:
    bot = load_bot(bot_path)
    load_models(bot)
    audio = conversation(gap_secs=6.0)
    turns = []
    for _ in range(runs):
        result = await run_on_recording(bot, audio)
        turns += result.turns
    summary = summarize(turns)
    return {
        "turns_measured": summary["answered"],
        "interrupted_turns": sum(t.interrupted for t in turns),
        "voice_to_voice_ms": summary["voice_to_voice_ms"],
        "stages_ms": summary["stages_ms"],
        "per_turn": [
            {"user": t.user_text.strip(), "voice_to_voice_ms": t.voice_to_voice_ms, **t.stages_ms()} for t in turns
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bot", type=Path, default=REPO / "bots" / "local.yaml")
    parser.add_argument("--runs", type=int, default=2, help="passes over the six-turn conversation")
    parser.add_argument("--skip-cold-start", action="store_true")
    args = parser.parse_args()

    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    result = {
        "benchmark": "local_latency",
        "bot": str(args.bot.relative_to(REPO) if args.bot.is_relative_to(REPO) else args.bot),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.processor()},
        "targets": {"voice_to_voice_p50_ms": 800, "cold_start_s": 15},
    }
    if not args.skip_cold_start:
        result["cold_start_s"] = round(cold_start_secs(args.bot), 2)
    result.update(asyncio.run(latency(args.bot, args.runs)))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
