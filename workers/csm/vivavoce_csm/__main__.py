"""``python -m vivavoce_csm``: serve CSM over the vivavoce worker protocol."""

from __future__ import annotations

import argparse

from vivavoce_csm.engine import CsmEngine
from vivavoce_worker.cli import add_common_args, add_output_args, resolve_device, run_worker

DEFAULT_PORT = 8710


def main() -> None:
    """Parse the options, load CSM once and serve it."""
    parser = add_common_args(argparse.ArgumentParser(description="vivavoce CSM worker"), default_port=DEFAULT_PORT)
    add_output_args(parser)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--max-audio-ms", type=int, default=20_000, help="longest utterance one request may ask for")
    args = parser.parse_args()
    engine = CsmEngine(args.model, resolve_device(args.device), dtype=args.dtype, max_audio_ms=args.max_audio_ms)
    run_worker(engine, args)


if __name__ == "__main__":
    main()
