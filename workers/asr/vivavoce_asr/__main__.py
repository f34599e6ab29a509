"""``python -m vivavoce_asr``: serve streaming speech recognition over ``WS /v1/asr`` (default port 8001)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from loguru import logger

from vivavoce_asr import models as packaged
from vivavoce_asr.engine import DEFAULT_MIN_WINDOW_SECS, WINDOWS_SECS, AsrModels, ModelThread, resolve_device
from vivavoce_asr.server import DEFAULT_MAX_CONNECTIONS, LiveStreams, create_app
from vivavoce_asr.session import SessionSettings
from vivavoce_asr.turns import TurnParams
from vivavoce_worker.cli import add_common_args, auth_from_args, fleet_membership, serve

DEFAULT_PORT = 8001


def parser() -> argparse.ArgumentParser:
    """The worker's options: the common ones plus the service's own."""
    p = add_common_args(argparse.ArgumentParser(description="vivavoce ASR service"), default_port=DEFAULT_PORT)
    p.set_defaults(model=None)
    p.add_argument("--compute-type", default=None, help="CTranslate2 precision (default: int8 on CPU, float16 on GPU)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for the models (default: all cores)")
    p.add_argument("--beam-size", type=int, default=1, help="Whisper beam size (1: greedy, as the agent)")
    p.add_argument(
        "--window-secs",
        type=int,
        default=DEFAULT_MIN_WINDOW_SECS,
        choices=WINDOWS_SECS,
        help="Whisper's shortest window: short turns are encoded in 10 s (faster, the agent's default) or 30 s",
    )
    p.add_argument("--max-connections", dest="max_sessions", type=int, help="the same as --max-sessions")
    p.set_defaults(max_sessions=DEFAULT_MAX_CONNECTIONS)
    p.add_argument("--max-batch", type=int, default=16, help="requests run together in one model batch (1: one by one)")
    p.add_argument("--partial-interval", type=float, default=0.5, help="seconds of speech between partials (0: none)")
    p.add_argument("--vad-threshold", type=float, default=TurnParams.threshold, help="Silero speech probability")
    p.add_argument("--start-secs", type=float, default=TurnParams.start_secs, help="speech that starts a turn")
    p.add_argument("--stop-secs", type=float, default=TurnParams.stop_secs, help="silence that makes a pause")
    p.add_argument(
        "--max-silence-secs",
        type=float,
        default=TurnParams.max_silence_secs,
        help="a pause this long ends the turn even when Smart Turn says it is not finished",
    )
    p.add_argument("--smart-turn", type=Path, default=None, help="Smart Turn v3 ONNX file (default: pipecat's)")
    p.add_argument("--vad-model", type=Path, default=None, help="Silero VAD v6 ONNX file (default: faster-whisper's)")
    return p


def main() -> None:
    """Parse the options, load the models once, warm them up and serve."""
    args = parser().parse_args()
    auth = auth_from_args(args)  # before loading: a missing key fails fast
    device = resolve_device(args.device)
    whisper = packaged.whisper_model(args.model)
    packaged_model = args.model is None or str(args.model) == packaged.PACKAGED_WHISPER
    name = packaged.PACKAGED_WHISPER if packaged_model else whisper.name
    started = time.perf_counter()
    models = AsrModels(
        whisper,
        packaged.smart_turn(args.smart_turn),
        packaged.silero_vad(args.vad_model),
        name=name,
        device=device,
        compute_type=args.compute_type,
        threads=args.threads or None,
        beam_size=args.beam_size,
        min_window_secs=args.window_secs,
    )
    loaded = time.perf_counter()
    models.warmup()
    logger.info(
        "ASR service ready: {} on {} ({}), loaded in {:.1f} s, warmed up in {:.1f} s",
        name,
        device,
        models.compute_type,
        loaded - started,
        time.perf_counter() - loaded,
    )
    settings = SessionSettings(
        turn=TurnParams(
            threshold=args.vad_threshold,
            start_secs=args.start_secs,
            stop_secs=args.stop_secs,
            max_silence_secs=args.max_silence_secs,
        ),
        partial_interval_secs=args.partial_interval,
    )
    thread = ModelThread(models, max_batch=args.max_batch)
    streams = LiveStreams()
    admission, drain = fleet_membership(
        args,
        family="asr",
        path="/v1/asr",
        busy=streams.mid_turn,
        stats=lambda: {"queue_depth": thread.depth},
        models=[name],
    )
    serve(create_app(thread, auth, settings=settings, admission=admission, streams=streams), args, drain=drain)


if __name__ == "__main__":
    main()
