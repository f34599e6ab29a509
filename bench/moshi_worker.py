"""Moshi worker: frame step time with 1, 2, 4, 8 conversations batched in one process (prints JSON).

The engine runs in the worker's own environment (workers/moshi/.venv, `make worker-moshi`), so this
script runs ``python -m vivavoce_moshi.bench`` there and returns its figures.

    python bench/moshi_worker.py                     # tiny random Moshi on CPU (a smoke figure)
    python bench/moshi_worker.py --real              # published weights on the GPU (goal: <= 40 ms at 4)
    python bench/moshi_worker.py --real --model DIR  # local copy of kyutai/moshiko-pytorch-bf16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

WORKER_DIR = Path(__file__).resolve().parents[1] / "workers" / "moshi"
WORKER_PYTHON = WORKER_DIR / ".venv" / "bin" / "python"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options (also used by bench/workers.py)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", action="store_true", help="real weights on cuda (else a tiny random model on CPU)")
    parser.add_argument("--model", type=Path, default=None, help="weights directory (default with --real: the hub)")
    parser.add_argument("--sessions", default="1,2,4,8", help="conversation counts to measure")
    parser.add_argument("--frames", type=int, default=25, help="frames stepped per count")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (tiny model)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Measure in the worker's venv and return its JSON as a dict."""
    if not WORKER_PYTHON.exists():
        raise SystemExit("the Moshi worker's environment is missing: run `make worker-moshi`")
    command = [str(WORKER_PYTHON), "-m", "vivavoce_moshi.bench", "--sessions", args.sessions,
               "--frames", str(args.frames)]
    env = dict(os.environ)
    if args.real:
        command += ["--device", "cuda"] + (["--model", str(args.model)] if args.model else ["--hub"])
    else:
        command += ["--device", "cpu", "--threads", str(args.threads)]
        command += ["--model", str(args.model)] if args.model else []
        env["NO_TORCH_COMPILE"] = "1"  # compiling costs more than it saves for a tiny model
    done = subprocess.run(command, cwd=WORKER_DIR, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"the Moshi benchmark failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(run(parse_args()), indent=2))
