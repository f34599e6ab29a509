"""The speech services' figures in one run: the ASR service (bench/asr_service.py) and the TTS service on the
Piper worker with loudness per engine (bench/tts_service.py), one after the other; prints one JSON object.

    python bench/services.py                      # both, with their defaults
    python bench/services.py --asr "--streams 1,8,16" --tts "--concurrency 1,4,8"

Each part runs as its own process (each starts its worker), so their load never overlaps.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def run(script: str, options: str) -> dict:
    """Run ``bench/<script>`` with ``options``; its JSON (stdout)."""
    done = subprocess.run([sys.executable, str(BENCH / script), *shlex.split(options)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{script} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout[done.stdout.index("{") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--asr", default="--streams 1,8,16", help="options for bench/asr_service.py")
    parser.add_argument("--tts", default="", help="options for bench/tts_service.py")
    args = parser.parse_args()
    print(json.dumps({"asr": run("asr_service.py", args.asr), "tts": run("tts_service.py", args.tts)}, indent=2))


if __name__ == "__main__":
    main()
