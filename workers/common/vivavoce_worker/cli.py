"""Command-line options every worker shares, and serving an app with them."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from vivavoce_worker.auth import DEFAULT_KEY_ENV, ApiKeyAuth, auth_from_env
from vivavoce_worker.fleet import Admission, Drain, add_fleet_args, advertised_url
from vivavoce_worker.loudness import DEFAULT_TARGET_LUFS, LoudnessControl, parse_target
from vivavoce_worker.protocol import PROTOCOL

if TYPE_CHECKING:
    from vivavoce_worker.engine import Engine

# uvicorn closes the socket (1009) above this; the protocol's own, smaller limit answers with an error
# message instead and keeps the socket, so this only stops abuse.
WS_TRANSPORT_MAX_BYTES = 64 * 1024 * 1024


def add_common_args(parser: argparse.ArgumentParser, *, default_port: int) -> argparse.ArgumentParser:
    """Add ``--host --port --model --config --device --no-auth --api-key-env`` and the fleet's options
    (``--registry --advertise-url --max-sessions --drain-secs``) to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=default_port, help="TCP port")
    parser.add_argument(
        "--model", type=Path, default=None, help="local weights directory (default: the published weights)"
    )
    parser.add_argument("--config", type=Path, default=None, help="model config file, where the family needs one")
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (cuda when available)")
    parser.add_argument("--no-auth", action="store_true", help="accept requests without an API key (local use)")
    parser.add_argument(
        "--api-key-env", default=DEFAULT_KEY_ENV, metavar="NAME", help="environment variable holding the API key"
    )
    return add_fleet_args(parser)


def add_output_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--loudness-lufs`` (TTS workers: every utterance normalised; ``off`` leaves the model's level)."""

    def target(value: str) -> float | None:
        try:
            return parse_target(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parser.add_argument(
        "--loudness-lufs",
        type=target,
        default=DEFAULT_TARGET_LUFS,
        metavar="LUFS|off",
        help=f"integrated loudness of every utterance, true peak <= -1 dBTP (default {DEFAULT_TARGET_LUFS:g}); "
        "off: the model's own level",
    )
    return parser


def loudness_from_args(args: argparse.Namespace) -> LoudnessControl | None:
    """The loudness normalisation ``--loudness-lufs`` asks for; None for off, and for workers without the option."""
    target = getattr(args, "loudness_lufs", None)
    return LoudnessControl(target) if target is not None else None


def auth_from_args(args: argparse.Namespace) -> ApiKeyAuth:
    """The auth the common options ask for (exits with a message if the key is missing)."""
    return auth_from_env(args.api_key_env, no_auth=args.no_auth)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def serve(app, args: argparse.Namespace, *, drain: Drain | None = None) -> None:
    """Run ``app`` with uvicorn on ``--host``/``--port``; with ``drain``, the first SIGTERM or Ctrl-C drains
    (and the registry entry, if any, lives from start-up to shutdown), a second one exits at once."""
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info", ws_max_size=WS_TRANSPORT_MAX_BYTES)
    if drain is not None and drain.registration is not None:
        app.router.add_event_handler("startup", drain.registration.start)
        app.router.add_event_handler("shutdown", drain.registration.stop)
    (DrainingServer(config, drain) if drain else uvicorn.Server(config)).run()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, whose first exit signal drains instead of closing every session at once."""

    def __init__(self, config: uvicorn.Config, drain: Drain):
        """Serve with ``drain`` run on the first SIGTERM (or Ctrl-C)."""
        super().__init__(config)
        self.drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_requested = False

    async def startup(self, sockets=None) -> None:
        """Remember the loop the signal handler hands the drain to."""
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        """First signal: drain, then exit; a second one (or one before start-up): uvicorn's own exit."""
        if self._drain_requested or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._drain_requested = True
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._loop.create_task(self.drain.run(lambda: setattr(self, "should_exit", True)))


def run_worker(engine: Engine, args: argparse.Namespace, *, routers_for=None) -> None:
    """Load and warm up ``engine`` once, then serve it (auth from the common options; with ``--registry``,
    registered in the fleet's registry once ready).

    ``routers_for(queue, auth)``: family-specific routers (e.g. Chatterbox's voices), built after load.
    """
    import time

    from loguru import logger

    from vivavoce_worker.engine import GenerationQueue
    from vivavoce_worker.server import create_app

    auth = auth_from_args(args)  # before loading: a missing key fails fast
    queue = GenerationQueue(engine, loudness=loudness_from_args(args))
    started = time.perf_counter()
    queue.run_sync(engine.load)
    loaded = time.perf_counter()
    queue.run_sync(engine.warmup)
    logger.info(
        "{} ready on {}: loaded in {:.1f} s, warmed up in {:.1f} s; loudness {}",
        engine.name,
        engine.device,
        loaded - started,
        time.perf_counter() - loaded,
        f"{queue.loudness.target_lufs:g} LUFS" if queue.loudness else "off",
    )
    routers = routers_for(queue, auth) if routers_for else ()

    def voices(loaded_only: bool = False) -> list[str]:
        listed = engine.health().get("voices") or []
        return [
            v["id"] if isinstance(v, dict) else str(v)
            for v in listed
            if not (loaded_only and isinstance(v, dict) and v.get("resident") is False)
        ]

    admission, drain = fleet_membership(
        args,
        family=engine.name,
        stats=lambda: {"queue_depth": queue.depth},
        busy=lambda: queue.streaming,
        voices=voices,
        resident=lambda: voices(loaded_only=True),
    )
    serve(create_app(engine, auth, queue=queue, routers=routers, admission=admission), args, drain=drain)


def fleet_membership(
    args: argparse.Namespace,
    *,
    family: str,
    busy,
    stats=lambda: {},
    path: str = "/v1/stream",
    models: Sequence[str] = (),
    voices=(),
    resident=None,
) -> tuple[Admission, Drain]:
    """A worker's admission (``--max-sessions``, refusing while draining) and its drain on SIGTERM, with its
    registry entry when ``--registry`` is given (advertising ``path`` on this host, or ``--advertise-url``).

    ``busy()``: requests in progress that a drain waits for; ``stats()``: live figures besides the active
    sessions (e.g. ``queue_depth``); ``voices``: a list or a callable read at each refresh; ``resident``: a
    callable giving the voices loaded now, for workers that load the others on demand.
    """
    admission = Admission(max_sessions=args.max_sessions)
    registration = None
    if args.registry:
        from vivavoce_worker.registration import Registration

        registration = Registration(
            args.registry,
            family=family,
            url=advertised_url(args, path),
            max_sessions=args.max_sessions,
            stats=lambda: {"active_sessions": admission.active, **stats()},
            models=models,
            voices=voices,
            resident=resident,
            version=PROTOCOL,
        )
    return admission, Drain(admission, busy, registration, drain_secs=args.drain_secs)
