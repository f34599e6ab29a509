"""``python -m vivavoce_chatterbox``: serve Chatterbox over the vivavoce worker protocol."""

from __future__ import annotations

import argparse
from pathlib import Path

from vivavoce_chatterbox.engine import ChatterboxEngine
from vivavoce_chatterbox.voices import voice_routers
from vivavoce_worker.cli import add_common_args, add_output_args, resolve_device, run_worker

DEFAULT_PORT = 8720


def main() -> None:
    """Parse the options, load Chatterbox and the saved voices once, and serve."""
    parser = add_common_args(
        argparse.ArgumentParser(description="vivavoce Chatterbox worker"), default_port=DEFAULT_PORT
    )
    add_output_args(parser)
    parser.add_argument("--voices-dir", type=Path, default=Path("voices"), help="where registered clips are kept")
    parser.add_argument("--chunk-tokens", type=int, default=25, help="speech tokens per streamed chunk (25 = 1 s)")
    args = parser.parse_args()
    engine = ChatterboxEngine(args.model, resolve_device(args.device), chunk_size=args.chunk_tokens)
    run_worker(engine, args, routers_for=voice_routers(engine, args.voices_dir))


if __name__ == "__main__":
    main()
