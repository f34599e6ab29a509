"""`vivavoce serve`: a FastAPI app serving one bot file over its transport.

The transport kind's ``serve`` adds its routes (see :class:`vivavoce.registry.TransportKind`); this module
adds ``GET /health`` and ``GET /metrics`` and what every serving process shares.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Response
from loguru import logger

from vivavoce.botfile import Bot
from vivavoce.live_sessions import LiveCalls, LiveSessions
from vivavoce.metrics import ServeMetrics
from vivavoce.turns import Turn

if TYPE_CHECKING:
    from vivavoce.call_store import RedisCalls

PUBLIC_URL_ENV = "VIVAVOCE_PUBLIC_URL"
# How `vivavoce serve --workers N` tells each serving process what to serve (see app_from_environment).
SERVE_BOT_ENV = "VIVAVOCE_SERVE_BOT"
SKIP_SIGNATURE_ENV = "VIVAVOCE_SERVE_INSECURE_SKIP_SIGNATURE"
LIVE_SESSIONS_ENV = "VIVAVOCE_LIVE_SESSIONS_DIR"


@dataclass(frozen=True)
class ServeContext:
    """What a transport's ``serve`` gets: the bot, and what the server shares with every session."""

    bot: Bot
    live: LiveCalls
    """The sessions live in every process (and host) serving this bot (claims, counts)."""
    on_turn: Callable[[Turn], None]
    """Called with every finished turn of every session (the metrics)."""
    public_url: str | None = None
    """Where clients reach the server from outside (a tunnel, a load balancer), if given."""
    skip_signature: bool = False
    """Accept unsigned webhooks (local development only)."""
    registry: RedisCalls | None = None
    """The Redis shared by agent hosts (``--registry``): also ``live``. None on one host."""
    stopping: threading.Event | None = None
    """Set when the server is told to stop (SIGTERM, SIGINT), before it closes its connections."""


def create_app(
    bot: Bot,
    *,
    public_url: str | None = None,
    skip_signature: bool = False,
    live: LiveCalls | None = None,
    registry: str | None = None,
) -> FastAPI:
    """The app for ``bot``: its transport's routes plus ``GET /health`` and ``GET /metrics``.

    ``live`` is the session registry shared by all processes serving this bot (one process: its own).
    ``registry`` (``redis://HOST:PORT/DB``): agent hosts share live calls, their context and the stream-token
    secret there (see :mod:`vivavoce.call_store`); :class:`~vivavoce.worker_directory.RegistryUnavailableError`
    names it when it does not answer. Raises ``ValueError`` with what to fix when the transport cannot be
    served as configured.
    """
    app = FastAPI(title=f"vivavoce: {bot.name}", docs_url=None, redoc_url=None)
    started = time.time()
    transport = bot.spec.transport
    public_url = public_url or os.environ.get(PUBLIC_URL_ENV)

    calls = None
    if registry:
        from vivavoce.call_store import RedisCalls

        live = calls = RedisCalls(registry)
        logger.info(f"live calls, their context and the stream-token secret are shared through {registry}")
    live = live or LiveSessions(os.environ.get(LIVE_SESSIONS_ENV) or None)
    app.router.on_shutdown.append(live.close)
    stopping = threading.Event()
    app.router.on_startup.append(lambda: _flag_stop_signals(stopping))
    metrics = ServeMetrics(active_sessions=live.count)
    if bot.transport.serve is None:
        raise ValueError(f"transport '{transport.kind}' is not served over HTTP: use `vivavoce run`")
    serve = bot.transport.load("serve")
    serve(
        app,
        ServeContext(
            bot=bot,
            live=live,
            on_turn=metrics.observe_turn,
            public_url=public_url,
            skip_signature=skip_signature,
            registry=calls,
            stopping=stopping,
        ),
    )
    app.state.metrics = metrics

    @app.get("/metrics")
    async def prometheus() -> Response:
        # In a thread: the active-sessions gauge reads the live calls (files, or Redis with a registry).
        return Response(await asyncio.to_thread(metrics.render), media_type=metrics.content_type)

    @app.get("/health")
    async def health() -> dict:
        return {
            "bot": bot.name,
            "transport": transport.kind,
            # Off the event loop: with a registry, counting is a Redis round trip.
            "active_sessions": await asyncio.to_thread(live.count),
            "pid": os.getpid(),
            "uptime_s": round(time.time() - started),
        }

    return app


def _flag_stop_signals(stopping: threading.Event) -> None:
    """Set ``stopping`` on SIGTERM and SIGINT, then let the server's own handlers (uvicorn's, installed before
    the app starts) stop it: sessions then know their end is the host's, not the call's."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread can handle signals; a server run elsewhere has nobody to tell it

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue  # the signal does not stop this server gracefully: nothing to tell the sessions

        def flag(signum: int, frame: Any, previous: Callable[..., Any] = previous) -> None:
            stopping.set()
            previous(signum, frame)

        signal.signal(sig, flag)


def app_from_environment() -> FastAPI:
    """uvicorn's app factory in each process of `vivavoce serve --workers N`: the bot named by
    VIVAVOCE_SERVE_BOT, with its models loaded before the process takes connections."""
    from vivavoce.botfile import load_bot
    from vivavoce.builder import load_models
    from vivavoce.gc_tuning import settle_after_startup
    from vivavoce.log_setup import configure_logging
    from vivavoce.realtime_env import apply_realtime_env

    configure_logging(default="INFO")
    apply_realtime_env()
    from vivavoce.worker_directory import REGISTRY_ENV

    bot = load_bot(os.environ[SERVE_BOT_ENV])
    app = create_app(
        bot, skip_signature=os.environ.get(SKIP_SIGNATURE_ENV) == "1", registry=os.environ.get(REGISTRY_ENV) or None
    )
    load_models(bot)
    settle_after_startup()
    logger.info(f"process {os.getpid()} serves {bot.name} with its models loaded")
    return app
