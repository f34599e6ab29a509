"""Frame step time of the batched engine with 1, 2, 4, 8... conversations stepping together (prints JSON).

Usage: ``python -m vivavoce_moshi.bench [--model DIR | --hub] [--device cuda] [--sessions 1,2,4,8]``;
without --model or --hub a tiny random checkpoint is written to a temporary directory (CPU smoke figures).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vivavoce_moshi.checkpoint import load_models
from vivavoce_moshi.engine import FRAME_SAMPLES, BatchedMoshi
from vivavoce_moshi.tiny import write_tiny_checkpoint

FRAME_MS = 80.0
DEFAULT_REPO = "kyutai/moshiko-pytorch-bf16"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(models, sessions: int, frames: int, device: str) -> dict:
    """Step ``sessions`` conversations together for ``frames`` frames; per-step wall time."""
    engine = BatchedMoshi(models, sessions)
    try:
        engine.warmup()
        rng = np.random.default_rng(0)
        audio = rng.normal(0, 0.05, (frames, sessions, FRAME_SAMPLES)).astype(np.float32)
        times = []
        for index in range(frames):
            _sync(device)
            started = time.perf_counter()
            engine.step({slot: audio[index, slot] for slot in range(sessions)})
            _sync(device)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        engine.close()
    steady = sorted(times[2:])  # the slots' first frames take another path (no output yet)
    p50 = steady[len(steady) // 2]
    return {
        "sessions": sessions,
        "frames": frames,
        "step_ms_p50": round(p50, 2),
        "step_ms_p90": round(steady[int(len(steady) * 0.9)], 2),
        "step_ms_max": round(steady[-1], 2),
        "real_time_factor": round(p50 / FRAME_MS, 3),
        "fits_real_time": steady[int(len(steady) * 0.9)] < FRAME_MS,
    }


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=None, help="weights directory (as the worker's --model)")
    parser.add_argument("--hub", action="store_true", help=f"the published weights ({DEFAULT_REPO})")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--sessions", default="1,2,4,8")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None and not args.hub:
            model = write_tiny_checkpoint(Path(tmp) / "tiny")
        models = load_models(model, DEFAULT_REPO, args.device, dtype)
        results = [measure(models, int(n), args.frames, args.device) for n in args.sessions.split(",")]
    print(json.dumps({
        "model": "tiny random (CPU smoke test)" if args.model is None and not args.hub else models.weights,
        "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
        "dtype": dtype,
        "torch_threads": torch.get_num_threads(),
        "frame_ms": FRAME_MS,
        "results": results,
    }))


if __name__ == "__main__":
    main()
