"""``python -m vivavoce_moshi``: load Moshi once, warm up, serve ``/api/chat`` and ``/health``."""

from __future__ import annotations

import argparse

from loguru import logger

from vivavoce_moshi.gate import GateSettings
from vivavoce_worker.cli import add_common_args, auth_from_args, fleet_membership, resolve_device, serve

DEFAULT_REPO = "kyutai/moshiko-pytorch-bf16"
DEFAULT_SLOTS = 4
FAMILY = "moshi"
"""The worker's family in the fleet's registry (what a bot file's ``moshi`` kind picks from)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The worker's command line."""
    parser = argparse.ArgumentParser(prog="vivavoce-moshi-worker", description=__doc__)
    add_common_args(parser, default_port=8998)
    parser.add_argument("--hf-repo", default=DEFAULT_REPO, help="published weights to load without --model")
    parser.add_argument("--slots", type=int, default=None,
                        help=f"conversations served at once: the batch size, and the fleet's --max-sessions "
                        f"(one limit; give either; default {DEFAULT_SLOTS})")
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
    # A conversation holds a batch slot for its whole length: the slots are the session limit, so
    # --max-sessions (the fleet's name for it) and --slots are one setting, not two limits.
    parser.set_defaults(max_sessions=None)
    args = parser.parse_args(argv)
    if args.slots is not None and args.max_sessions is not None and args.slots != args.max_sessions:
        parser.error(f"--slots {args.slots} and --max-sessions {args.max_sessions} are the same limit: give one")
    args.slots = args.max_sessions = args.slots or args.max_sessions or DEFAULT_SLOTS
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
    frame_loop = FrameLoop(engine, tick_ms=args.tick_ms)
    # Registered (with --registry) only now, loaded and warmed up. A drain waits for the conversations, which
    # go on until their clients hang up or --drain-secs passes. No queue_depth: a conversation never waits
    # for a slot (a full worker refuses it), so the load agents compare is conversations per slot.
    admission, drain = fleet_membership(
        args, family=FAMILY, busy=lambda: frame_loop.active, path="/api/chat", models=[str(engine.weights)]
    )
    app = create_app(frame_loop, auth, device=device, gate=gate, admission=admission)
    serve(app, args, drain=drain)


if __name__ == "__main__":
    main()
