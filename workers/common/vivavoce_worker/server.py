"""The worker's FastAPI app: ``WS /v1/stream``, ``WS /v1/native/ws/{session}``, ``WS /v1/tts``,
``POST /synthesize``, ``/health``."""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Response, WebSocket
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, model_validator

from vivavoce_worker.audio import float_to_pcm16, mulaw_8k, resample, wav_bytes
from vivavoce_worker.auth import ApiKeyAuth
from vivavoce_worker.engine import Engine, GenerationQueue, GenerationStats, SynthesisRequest
from vivavoce_worker.fleet import TRY_AGAIN_LATER, Admission
from vivavoce_worker.framing import Reframer, samples_for_ms
from vivavoce_worker.health import health_router
from vivavoce_worker.protocol import (
    MAX_CONTEXT_TURNS,
    MAX_PENDING_PER_SOCKET,
    MAX_TEXT_CHARS,
    PROTOCOL,
    CancelMessage,
    ContextTurn,
    ProtocolError,
    RequestId,
    SynthesizeMessage,
    check_output_format,
    error_message,
    parse_client_message,
)
from vivavoce_worker.socket_loop import RequestSocket
from vivavoce_worker.tts_service import serve_tts_socket

MAX_NATIVE_SESSIONS = 256


class SynthesizeBody(BaseModel):
    """``POST /synthesize``: one utterance, returned whole."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    voice: str | None = Field(None, max_length=128)
    speaker: int | None = Field(None, ge=0, le=63)
    format: Literal["wav", "mulaw8k"] = "wav"
    max_audio_ms: int | None = Field(None, ge=80, le=120_000)
    exaggeration: float | None = Field(None, ge=0, le=2)
    cfg_weight: float | None = Field(None, ge=0, le=2)
    temperature: float | None = Field(None, gt=0, le=2)
    sample_rate: int | None = Field(None, description="Rate of the WAV (one of SAMPLE_RATES; default: the model's).")
    session: str | None = Field(
        None, max_length=128, description="A native session id: speak with (and extend) its conversation context."
    )
    id: RequestId | None = Field(
        None, description="The request's id (default: a new one); later requests of the session reference it."
    )
    context: list[ContextTurn] = Field(default_factory=list, max_length=MAX_CONTEXT_TURNS)

    @model_validator(mode="after")
    def _output_format(self) -> SynthesizeBody:
        check_output_format(self.sample_rate, None)
        return self


def _request(msg: SynthesizeMessage | SynthesizeBody, request_id: str) -> SynthesisRequest:
    options = {k: v for k in ("exaggeration", "cfg_weight", "temperature") if (v := getattr(msg, k)) is not None}
    return SynthesisRequest(
        id=request_id,
        text=msg.text,
        voice=msg.voice,
        speaker=msg.speaker,
        context=list(getattr(msg, "context", [])),
        max_audio_ms=msg.max_audio_ms,
        options=options,
        sample_rate=msg.sample_rate,
        frame_ms=getattr(msg, "frame_ms", None),
    )


class _Socket(RequestSocket):
    """One protocol connection: its requests run one at a time, in order (binary frames belong to the
    request of the latest ``start``)."""

    route = "/v1/stream"

    def __init__(self, ws: WebSocket, queue: GenerationQueue, session: Any):
        super().__init__(ws)
        self.queue = queue
        self.session = session
        self.pending: dict[str, SynthesisRequest] = {}
        self.active: SynthesisRequest | None = None
        self._todo: asyncio.Queue[SynthesisRequest] = asyncio.Queue()

    async def handle(self, text: str) -> None:
        await self._handle(parse_client_message(text))

    def cancel_all(self) -> None:
        for request in [*self.pending.values(), *([self.active] if self.active else [])]:
            request.cancelled.set()

    async def _handle(self, msg: SynthesizeMessage | CancelMessage) -> None:
        if isinstance(msg, CancelMessage):
            if self.active is not None and self.active.id == msg.id:
                self.active.cancelled.set()  # its `done` follows once generation has stopped
            elif (queued := self.pending.pop(msg.id, None)) is not None:
                queued.cancelled.set()
                self.queue.cancelled += 1
                await self.send_json({"type": "done", "id": msg.id, **GenerationStats(cancelled=True).as_dict()})
            else:
                raise ProtocolError("unknown_id", f"no queued or running request {msg.id!r}", msg.id)
            return
        if msg.id in self.pending or (self.active is not None and self.active.id == msg.id):
            raise ProtocolError("duplicate_id", f"request {msg.id!r} is already queued or running", msg.id)
        if len(self.pending) >= MAX_PENDING_PER_SOCKET:
            raise ProtocolError("busy", f"more than {MAX_PENDING_PER_SOCKET} requests queued on this socket", msg.id)
        request = _request(msg, msg.id)
        self.pending[msg.id] = request
        self._todo.put_nowait(request)

    async def work(self) -> None:
        while True:
            request = await self._todo.get()
            if request.cancelled.is_set():
                continue  # cancelled while queued: `done` already sent
            self.pending.pop(request.id, None)
            self.active = request
            try:
                await self._speak(request)
            finally:
                self.active = None

    async def _speak(self, request: SynthesisRequest) -> None:
        stats = GenerationStats()
        engine_rate = self.queue.engine.sample_rate
        rate = request.sample_rate or engine_rate
        try:
            frame = samples_for_ms(request.frame_ms, rate) if request.frame_ms else None
        except ValueError as e:
            await self.send_json(error_message("bad_request", str(e), request.id))
            return
        reframer = Reframer(engine_rate, rate, frame, pad_last=True)
        await self.send_json({"type": "start", "id": request.id, "sample_rate": rate, "format": "pcm_s16le"})
        try:
            async for chunk in self.queue.stream(request, self.session, stats):
                for piece in reframer.push(chunk):
                    if not request.cancelled.is_set():  # chunks already in flight when cancel came are dropped
                        await self.send_bytes(float_to_pcm16(piece))
            for piece in reframer.flush():
                if not request.cancelled.is_set():
                    await self.send_bytes(float_to_pcm16(piece))
        except ValueError as e:
            await self.send_json(error_message("bad_request", str(e), request.id))
            return
        except Exception as e:
            logger.exception("generation failed for {}", request.id)
            await self.send_json(error_message("engine_error", f"{type(e).__name__}: {e}", request.id))
            return
        await self.send_json({"type": "done", "id": request.id, **stats.as_dict(), **request.report})


class _NativeSessions:
    """Conversation state of ``/v1/native/ws/{session}`` sessions, kept across reconnects (LRU)."""

    def __init__(self, engine: Engine, limit: int = MAX_NATIVE_SESSIONS):
        self._engine = engine
        self._limit = limit
        self._states: OrderedDict[str, Any] = OrderedDict()

    def get(self, session_id: str) -> Any:
        state = self._states.pop(session_id, None)
        if state is None:
            state = self._engine.new_session()
        self._states[session_id] = state
        while len(self._states) > self._limit:
            self._states.popitem(last=False)
        return state


def create_app(
    engine: Engine,
    auth: ApiKeyAuth,
    *,
    queue: GenerationQueue | None = None,
    routers: Iterable[APIRouter] = (),
    admission: Admission | None = None,
) -> FastAPI:
    """The worker app over a loaded ``engine``; ``routers``: family-specific routes (already guarded);
    ``admission``: how many sessions it takes, and whether it drains (default: no limit)."""
    queue = queue or GenerationQueue(engine)
    native = _NativeSessions(engine)
    admission = admission or Admission(max_sessions=2**31)
    app = FastAPI(title=f"vivavoce {engine.name} worker", version=PROTOCOL)

    def live() -> dict[str, Any]:
        return {
            "engine": engine.name,
            "protocol": PROTOCOL,
            "sample_rate": engine.sample_rate,
            "active_sessions": admission.active,
            "max_sessions": admission.max_sessions,
            "state": "draining" if admission.draining else "ready",
            "queue_depth": queue.depth,
            "requests": {"finished": queue.finished, "cancelled": queue.cancelled},
            "loudness": queue.loudness.describe() if queue.loudness else None,
            **engine.health(),
        }

    app.include_router(health_router(model=engine.name, device=engine.device, extra=live))
    for router in routers:
        app.include_router(router)

    async def admitted(ws: WebSocket) -> bool:
        """Authenticate and admit a session (a full or draining worker accepts, then closes with 1013)."""
        if not await auth.check_websocket(ws):
            return False
        await ws.accept()
        refusal = admission.refusal()
        if refusal is not None:
            await ws.close(code=TRY_AGAIN_LATER, reason=refusal)
            return False
        admission.active += 1
        return True

    async def serve_socket(ws: WebSocket, session: Any) -> None:
        if not await admitted(ws):
            return
        try:
            await _Socket(ws, queue, session).run()
        finally:
            admission.active -= 1

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        await serve_socket(ws, engine.new_session())

    @app.websocket("/v1/tts")
    async def tts(ws: WebSocket) -> None:
        if not await admitted(ws):
            return
        try:
            await serve_tts_socket(ws, queue)
        finally:
            admission.active -= 1

    @app.websocket("/v1/native/ws/{session_id}")
    async def native_stream(ws: WebSocket, session_id: str) -> None:
        await serve_socket(ws, native.get(session_id))

    @app.post("/synthesize", dependencies=[Depends(auth)])
    async def synthesize(body: SynthesizeBody) -> Response:
        session = native.get(body.session) if body.session else engine.new_session()
        request_id = body.id or f"http-{uuid.uuid4().hex}"
        request = _request(body, request_id=request_id)
        stats = GenerationStats()
        try:
            chunks = [chunk async for chunk in queue.stream(request, session, stats)]
        except ValueError as e:
            raise HTTPException(400, detail=str(e), headers={"X-Request-Id": request_id}) from None
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        headers = {
            "X-Request-Id": request_id,
            "X-Audio-Ms": f"{stats.audio_ms:.0f}",
            "X-First-Chunk-Ms": f"{stats.first_chunk_ms or 0:.0f}",
        }
        if body.format == "mulaw8k":
            return Response(
                mulaw_8k(float_to_pcm16(audio), engine.sample_rate), media_type="audio/basic", headers=headers
            )
        rate = body.sample_rate or engine.sample_rate
        pcm = float_to_pcm16(resample(audio, engine.sample_rate, rate))
        return Response(wav_bytes(pcm, rate), media_type="audio/wav", headers=headers)

    return app
