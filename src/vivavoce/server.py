"""`vivavoce serve`: a FastAPI app serving one bot file over its transport."""

from __future__ import annotations

import os
import time

from fastapi import FastAPI, Response

from vivavoce.botfile import Bot
from vivavoce.botfile.schema import TwilioTransportConfig, WebRTCTransportConfig
from vivavoce.metrics import ServeMetrics

PUBLIC_URL_ENV = "VIVAVOCE_PUBLIC_URL"


def create_app(bot: Bot, *, public_url: str | None = None, skip_signature: bool = False) -> FastAPI:
    """The app for ``bot``: its transport's routes plus ``GET /health``.

    Raises ``ValueError`` with what to fix when the transport cannot be served as configured.
    """
    app = FastAPI(title=f"vivavoce: {bot.name}", docs_url=None, redoc_url=None)
    started = time.time()
    transport = bot.spec.transport
    public_url = public_url or os.environ.get(PUBLIC_URL_ENV)

    sessions: dict = {}
    metrics = ServeMetrics(active_sessions=lambda: len(sessions))
    if isinstance(transport, TwilioTransportConfig):
        from vivavoce.transports.twilio_server import TwilioCalls, TwilioServerSettings

        calls = TwilioCalls(
            bot,
            TwilioServerSettings.from_bot(transport, public_url=public_url, skip_signature=skip_signature),
            on_turn=metrics.observe_turn,
        )
        sessions = calls.calls
        app.include_router(calls.router())
        app.state.calls = calls
    elif isinstance(transport, WebRTCTransportConfig):
        from vivavoce.transports.webrtc_server import WebRTCSessions

        webrtc = WebRTCSessions(bot, transport, on_turn=metrics.observe_turn)
        sessions = webrtc.sessions
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
            "active_sessions": len(sessions),
            "uptime_s": round(time.time() - started),
        }

    return app
