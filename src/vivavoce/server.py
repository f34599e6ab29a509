"""`vivavoce serve`: a FastAPI app serving one bot file over its transport."""

from __future__ import annotations

import os
import time

from fastapi import FastAPI, Response
from loguru import logger

from vivavoce.botfile import Bot
from vivavoce.botfile.schema import TwilioTransportConfig, WebRTCTransportConfig
from vivavoce.live_sessions import LiveSessions
from vivavoce.metrics import ServeMetrics

PUBLIC_URL_ENV = "VIVAVOCE_PUBLIC_URL"
# How `vivavoce serve --workers N` tells each serving process what to serve (see app_from_environment).
SERVE_BOT_ENV = "VIVAVOCE_SERVE_BOT"
SKIP_SIGNATURE_ENV = "VIVAVOCE_SERVE_INSECURE_SKIP_SIGNATURE"
LIVE_SESSIONS_ENV = "VIVAVOCE_LIVE_SESSIONS_DIR"


def create_app(
    bot: Bot, *, public_url: str | None = None, skip_signature: bool = False, live: LiveSessions | None = None
) -> FastAPI:
    """The app for ``bot``: its transport's routes plus ``GET /health`` and ``GET /metrics``.

    ``live`` is the session registry shared by all processes serving this bot (one process: its own).
    Raises ``ValueError`` with what to fix when the transport cannot be served as configured.
    """
    app = FastAPI(title=f"vivavoce: {bot.name}", docs_url=None, redoc_url=None)
    started = time.time()
    transport = bot.spec.transport
    public_url = public_url or os.environ.get(PUBLIC_URL_ENV)

    live = live or LiveSessions(os.environ.get(LIVE_SESSIONS_ENV) or None)
    metrics = ServeMetrics(active_sessions=live.count)
    if isinstance(transport, TwilioTransportConfig):
        from vivavoce.transports.twilio_server import TwilioCalls, TwilioServerSettings

        calls = TwilioCalls(
            bot,
            TwilioServerSettings.from_bot(transport, public_url=public_url, skip_signature=skip_signature),
            on_turn=metrics.observe_turn,
            live=live,
        )
        app.include_router(calls.router())
        app.state.calls = calls
    elif isinstance(transport, WebRTCTransportConfig):
        from vivavoce.transports.webrtc_server import WebRTCSessions

        webrtc = WebRTCSessions(bot, transport, on_turn=metrics.observe_turn, live=live)
        app.include_router(webrtc.router())
        app.router.add_event_handler("shutdown", webrtc.close)
        app.state.webrtc = webrtc
    else:
        raise ValueError(f"transport '{transport.kind}' is not served over HTTP: use `vivavoce run`")
    app.state.metrics = metrics

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/health")
    async def health() -> dict:
        return {
            "bot": bot.name,
            "transport": transport.kind,
            "active_sessions": live.count(),
            "pid": os.getpid(),
            "uptime_s": round(time.time() - started),
        }

    return app


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
    bot = load_bot(os.environ[SERVE_BOT_ENV])
    app = create_app(bot, skip_signature=os.environ.get(SKIP_SIGNATURE_ENV) == "1")
    load_models(bot)
    settle_after_startup()
    logger.info(f"process {os.getpid()} serves {bot.name} with its models loaded")
    return app
