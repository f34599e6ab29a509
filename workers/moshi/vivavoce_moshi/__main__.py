"""``python -m vivavoce_moshi``: load Moshi once, warm up, serve ``/api/chat`` and ``/health``."""

from __future__ import annotations

import argparse

from loguru import logger

from vivavoce_moshi.gate import GateSettings
from vivavoce_worker.cli import add_common_args, auth_from_args, resolve_device, serve

DEFAULT_REPO = "kyutai/moshiko-pytorch-bf16"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The worker's command line."""
    parser = argparse.ArgumentParser(prog="vivavoce-moshi-worker", description=__doc__)
    add_common_args(parser, default_port=8998)
    parser.add_argument("--hf-repo", default=DEFAULT_REPO, help="published weights to load without --model")
    parser.add_argument("--slots", type=int, default=4, help="conversations served at once (the batch size)")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="LM weights (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--tick-ms", type=float, default=80.0, help="frame clock (80 ms: Mimi's frame)")
    parser.add_argument("--greedy", action="store_true", help="argmax instead of sampling (deterministic)")
    parser.add_argument("--temp", type=float, default=None, help="audio sampling temperature")
    parser.add_argument("--temp-text", type=float, default=None, help="text sampling temperature")
    parser.add_argument("--seed", type=int, default=42424242, help="torch seed (moshi's server uses this one)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-gate", action="store_true", help="no turn gating unless a client asks (gate=on)")
    parser.add_argument("--gate-silence-ms", type=int, default=GateSettings.silence_ms,
                        help="the model stays silent until the user has been quiet this long")
    parser.add_argument("--gate-threshold-db", type=float, default=GateSettings.threshold_db,
                        help="input level (dBFS per 80 ms frame) counted as user speech")
    args = parser.parse_args(argv)
    if args.slots < 1:
        parser.error("--slots must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the worker."""
    args = parse_args(argv)
    auth = auth_from_args(args)
    import torch

    from vivavoce_moshi.checkpoint import load_models
    from vivavoce_moshi.engine import BatchedMoshi
    from vivavoce_moshi.frame_loop import FrameLoop
    from vivavoce_moshi.server import create_app

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    models = load_models(args.model, args.hf_repo, device, dtype, config=args.config)
    engine = BatchedMoshi(models, args.slots, greedy=args.greedy, temp=args.temp, temp_text=args.temp_text)
    engine.warmup()
    gate = GateSettings(not args.no_gate, args.gate_silence_ms, args.gate_threshold_db)
    logger.info(f"Moshi ready on {device}: {args.slots} conversations, gating {'on' if gate.enabled else 'off'}")
    serve(create_app(FrameLoop(engine, tick_ms=args.tick_ms), auth, device=device, gate=gate), args)


if __name__ == "__main__":
    main()
