"""``python -m vivavoce_piper``: serve Piper voices over the vivavoce worker protocol and ``/v1/tts``, on the CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from vivavoce_piper.engine import DEFAULT_MIN_RESIDENCY_S, DEFAULT_VOICE, PiperEngine
from vivavoce_worker.cli import add_common_args, add_output_args, run_worker

DEFAULT_PORT = 8002


def main() -> None:
    """Parse the options, load the default voice (and the preloaded ones) and serve; others load on demand."""
    parser = add_output_args(
        add_common_args(argparse.ArgumentParser(description="vivavoce Piper worker"), default_port=DEFAULT_PORT)
    )
    parser.add_argument(
        "--voice",
        action="append",
        default=None,
        metavar="NAME|PATH.onnx",
        help=f"a voice to serve (repeatable; the first is the default, loaded at start; default {DEFAULT_VOICE})",
    )
    parser.add_argument(
        "--voices-dir", type=Path, default=None, help="serve every VOICE.onnx (with its VOICE.onnx.json) in this folder"
    )
    parser.add_argument(
        "--resident-cap",
        type=int,
        default=None,
        metavar="N",
        help="most voices loaded at once; the least recently used idle one goes beyond (default: as many as --voice)",
    )
    parser.add_argument(
        "--idle-ttl-secs", type=float, default=0.0, help="unload a voice unused this long (default 0: never)"
    )
    parser.add_argument(
        "--min-residency-secs",
        type=float,
        default=DEFAULT_MIN_RESIDENCY_S,
        help=f"never unload a voice loaded less than this ago (default {DEFAULT_MIN_RESIDENCY_S:g})",
    )
    parser.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="VOICE",
        help="a voice (id or path) to load at start beside the default one (repeatable)",
    )
    parser.add_argument("--max-audio-ms", type=int, default=60_000, help="longest utterance one request may ask for")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads per inference (0: all cores)")
    args = parser.parse_args()
    if args.model is not None:
        parser.error("--model: give Piper voices with --voice NAME|PATH.onnx")
    if args.device not in ("auto", "cpu"):
        parser.error("the Piper worker runs on the CPU: --device cpu (or auto)")
    if args.resident_cap is not None and args.resident_cap < 1:
        parser.error("--resident-cap must be at least 1")
    voices = args.voice or [DEFAULT_VOICE]
    at_start = len({voices[0], *args.preload})
    if args.resident_cap is not None and at_start > args.resident_cap:
        parser.error(f"--resident-cap {args.resident_cap} is below the {at_start} voices loaded at start")
    engine = PiperEngine(
        voices,
        args.max_audio_ms,
        args.threads,
        voices_dir=args.voices_dir,
        resident_cap=args.resident_cap or max(len(dict.fromkeys(voices)), at_start),
        idle_ttl_s=args.idle_ttl_secs or None,
        min_residency_s=args.min_residency_secs,
        preload=args.preload,
    )
    run_worker(engine, args, routers_for=lambda _queue, _auth: engine.routers())


if __name__ == "__main__":
    main()
