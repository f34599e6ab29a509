"""The ASR service's FastAPI app: ``WS /v1/asr`` and ``GET /health``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, WebSocket
from loguru import logger

from vivavoce_asr.engine import ModelThread
from vivavoce_asr.protocol import MODEL_RATE, PROTOCOL, WS_TRY_AGAIN_LATER, AsrError
from vivavoce_asr.session import AsrSession, SessionSettings
from vivavoce_worker.auth import ApiKeyAuth
from vivavoce_worker.fleet import Admission
from vivavoce_worker.health import health_router

DEFAULT_MAX_CONNECTIONS = 30


class LiveStreams:
    """The streams being served, for the drain: it waits while any is in the middle of a turn."""

    def __init__(self) -> None:
        """None yet."""
        self.sessions: set[AsrSession] = set()

    def mid_turn(self) -> int:
        """Streams whose current turn has not had its final yet."""
        return sum(1 for session in self.sessions if session.mid_turn)


def create_app(
    models: ModelThread,
    auth: ApiKeyAuth,
    *,
    settings: SessionSettings | None = None,
    admission: Admission | None = None,
    streams: LiveStreams | None = None,
) -> FastAPI:
    """The service over loaded models (``models`` runs them for every stream); ``admission``: at most
    ``max_sessions`` streams, none while draining (default: 30, no drain)."""
    settings = settings or SessionSettings()
    admission = admission or Admission(max_sessions=DEFAULT_MAX_CONNECTIONS)
    streams = streams or LiveStreams()
    engine = models.models
    app = FastAPI(title="vivavoce ASR service", version=PROTOCOL)
    served = {"streams": 0, "refused_full": 0, "refused_draining": 0}

    def live() -> dict[str, Any]:
        counters = models.counters
        queue = models.depth
        return {
            "engine": "faster-whisper",
            "protocol": PROTOCOL,
            "sample_rate": MODEL_RATE,
            "compute_type": engine.compute_type,
            "window_secs": engine.min_window_secs,
            "state": "draining" if admission.draining else "ready",
            "sessions": admission.active,
            "queue": queue,
            # The names the synthesis workers use for the same two figures.
            "active_sessions": admission.active,
            "queue_depth": queue,
            "max_sessions": admission.max_sessions,
            "max_connections": admission.max_sessions,
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
        if not await auth.check_websocket(ws):
            return
        await ws.accept()
        refusal = admission.refusal()
        if refusal is not None:
            draining = admission.draining
            served["refused_draining" if draining else "refused_full"] += 1
            logger.warning("refused a stream: {}", refusal)
            code = "draining" if draining else "too_many_connections"
            await ws.send_json(AsrError(code, f"{refusal}: try again later").reply())
            await ws.close(code=WS_TRY_AGAIN_LATER, reason=refusal[:100])
            return
        admission.active += 1
        served["streams"] += 1
        session = AsrSession(ws, models, settings)
        streams.sessions.add(session)
        try:
            await session.run()
        finally:
            streams.sessions.discard(session)
            admission.active -= 1

    return app
