"""``python -m vivavoce_piper``: serve Piper voices over the vivavoce worker protocol and ``/v1/tts``, on the CPU."""

from __future__ import annotations

import argparse

from vivavoce_piper.engine import DEFAULT_VOICE, PiperEngine
from vivavoce_worker.cli import add_common_args, add_output_args, run_worker

DEFAULT_PORT = 8002


def main() -> None:
    """Parse the options, load the voices once and serve them."""
    parser = add_output_args(
        add_common_args(argparse.ArgumentParser(description="vivavoce Piper worker"), default_port=DEFAULT_PORT)
    )
    parser.add_argument(
        "--voice",
        action="append",
        default=None,
        metavar="NAME|PATH.onnx",
        help=f"a voice to load (repeat for several; the first is the default; default {DEFAULT_VOICE})",
    )
    parser.add_argument("--max-audio-ms", type=int, default=60_000, help="longest utterance one request may ask for")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads per inference (0: all cores)")
    args = parser.parse_args()
    if args.model is not None:
        parser.error("--model: give Piper voices with --voice NAME|PATH.onnx")
    if args.device not in ("auto", "cpu"):
        parser.error("the Piper worker runs on the CPU: --device cpu (or auto)")
    run_worker(PiperEngine(args.voice or [DEFAULT_VOICE], args.max_audio_ms, args.threads), args)


if __name__ == "__main__":
    main()
