"""`vivavoce serve`: a FastAPI app serving one bot file over its transport."""

from __future__ import annotations

import os
import time

from fastapi import FastAPI

from vivavoce.botfile import Bot
from vivavoce.botfile.schema import TwilioTransportConfig

PUBLIC_URL_ENV = "VIVAVOCE_PUBLIC_URL"


def create_app(bot: Bot, *, public_url: str | None = None, skip_signature: bool = False) -> FastAPI:
    """The app for ``bot``: its transport's routes plus ``GET /health``.

    Raises ``ValueError`` with what to fix when the transport cannot be served as configured.
    """
    app = FastAPI(title=f"vivavoce: {bot.name}", docs_url=None, redoc_url=None)
    started = time.time()
    transport = bot.spec.transport
    public_url = public_url or os.environ.get(PUBLIC_URL_ENV)

    if isinstance(transport, TwilioTransportConfig):
        from vivavoce.transports.twilio_server import TwilioCalls, TwilioServerSettings

        calls = TwilioCalls(
            bot, TwilioServerSettings.from_bot(transport, public_url=public_url, skip_signature=skip_signature)
        )
        app.include_router(calls.router())
        app.state.calls = calls
        active = lambda: len(calls.calls)  # noqa: E731
    else:
        raise ValueError(f"transport '{transport.kind}' is not served over HTTP: use `vivavoce run`")

    @app.get("/health")
    async def health() -> dict:
        return {"bot": bot.name, "transport": transport.kind, "active_sessions": active(), "uptime_s": round(time.time() - started)}

    return app
