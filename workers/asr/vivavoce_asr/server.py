"""The ASR service's FastAPI app: ``WS /v1/asr`` and ``GET /health``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, WebSocket
from loguru import logger

from vivavoce_asr.engine import ModelThread
from vivavoce_asr.protocol import MODEL_RATE, PROTOCOL, WS_TRY_AGAIN_LATER, error_message
from vivavoce_asr.session import AsrSession, SessionSettings
from vivavoce_worker.auth import ApiKeyAuth
from vivavoce_worker.health import health_router

DEFAULT_MAX_CONNECTIONS = 30


def create_app(
    models: ModelThread,
    auth: ApiKeyAuth,
    *,
    settings: SessionSettings | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> FastAPI:
    """The service over loaded models (``models`` runs them for every stream)."""
    settings = settings or SessionSettings()
    engine = models.models
    app = FastAPI(title="vivavoce ASR service", version=PROTOCOL)
    sessions = 0
    served = {"streams": 0, "refused_full": 0}

    def live() -> dict[str, Any]:
        counters = models.counters
        queue = models.depth
        return {
            "engine": "faster-whisper",
            "protocol": PROTOCOL,
            "sample_rate": MODEL_RATE,
            "compute_type": engine.compute_type,
            "window_secs": engine.min_window_secs,
            "sessions": sessions,
            "queue": queue,
            # The names the synthesis workers use for the same two figures.
            "active_sessions": sessions,
            "queue_depth": queue,
            "max_connections": max_connections,
            "max_batch": models.max_batch,
            "languages": len(engine.languages),
            "streams": dict(served),
            "requests": dict(counters.jobs),
            "batches": dict(counters.batches),
            "largest_batch": counters.largest_batch,
            "model_busy_s": round(counters.busy_s, 3),
        }

    app.include_router(health_router(model=engine.name, device=engine.device, extra=live))

    @app.websocket("/v1/asr")
    async def asr(ws: WebSocket) -> None:
        nonlocal sessions
        if not await auth.check_websocket(ws):
            return
        await ws.accept()
        if sessions >= max_connections:
            served["refused_full"] += 1
            logger.warning("refused a stream: {} of {} connections in use", sessions, max_connections)
            await ws.send_json(
                error_message("too_many_connections", f"all {max_connections} streams are in use: try again later")
            )
            await ws.close(code=WS_TRY_AGAIN_LATER, reason="too many connections")
            return
        sessions += 1
        served["streams"] += 1
        try:
            await AsrSession(ws, models, settings).run()
        finally:
            sessions -= 1

    return app
