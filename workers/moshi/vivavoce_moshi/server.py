"""``/api/chat``: Kyutai's Moshi protocol, several conversations per process; ``GET /health``.

These are the only routes: Moshi is speech to speech, so the text-to-speech routes of the other workers
(``/v1/stream``, ``/v1/tts``, ``/v1/native/ws/...``, ``POST /synthesize``) have nothing to serve here. Any
other path answers HTTP 404 with a reason that names the routes, a WebSocket handshake included (rather
than the bare 403 a server gives a socket it has no route for).

Every binary message starts with a kind byte, as in moshi's own server:

- ``0x00`` handshake: sent by the server once the conversation has a slot and may start;
- ``0x01`` + audio: Ogg/Opus pages (24 kHz mono) both ways, or with ``?codec=pcm16`` raw PCM16 LE at 24 kHz
  (the server sends one 80 ms frame, 3840 bytes, per message);
- ``0x02`` + UTF-8: a piece of the model's text (server to client);
- ``0x05`` + UTF-8: an error (server to client), as in Kyutai's Rust server. A malformed message gets one
  and is dropped; a broken Opus stream, a full server or a draining one (SIGTERM) gets one, then the socket
  closes with the reason (1013, try again later, for full and draining: before the handshake byte).

Query parameters: ``api_key``, ``codec`` (``opus``, ``pcm16``), ``gate`` (``on``/``off``),
``gate_silence_ms``, ``gate_threshold_db``. The API key may also come as the ``X-API-Key`` or
``Authorization: Bearer`` header, or as HTTP Basic credentials (the key as the password, or as the user
name with no password): the one way Kyutai's own client (``moshi-client-py``, aiohttp) can send it, from
a URL such as ``ws://moshi:KEY@host:8998``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from contextlib import suppress
from typing import Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from loguru import logger

from vivavoce_moshi.codecs import CODECS
from vivavoce_moshi.engine import SAMPLE_RATE
from vivavoce_moshi.frame_loop import Conversation, FrameLoop
from vivavoce_moshi.gate import GateSettings
from vivavoce_worker.auth import ApiKeyAuth
from vivavoce_worker.fleet import TRY_AGAIN_LATER, Admission
from vivavoce_worker.health import health_router

PROTOCOL = "kyutai-moshi"
"""``/health``'s ``protocol``: Kyutai's ``/api/chat`` (unversioned upstream) with this worker's additions."""
ROUTES = ("WS /api/chat (Kyutai's protocol)", "GET /health")
"""Everything this worker serves."""

HANDSHAKE, AUDIO, TEXT, ERROR = 0x00, 0x01, 0x02, 0x05
MAX_MESSAGE_BYTES = 1 << 20
"""Larger client messages are refused (an error message; the socket stays open)."""

WS_UNSUPPORTED_DATA = 1003
WS_POLICY_VIOLATION = 1008
WS_INVALID_PAYLOAD = 1007


class BadRequest(ValueError):
    """Query parameters the server refuses."""


def gate_settings(query: Any, default: GateSettings) -> GateSettings:
    """The conversation's gating from its query parameters (``default`` where absent)."""
    settings = GateSettings(default.enabled, default.silence_ms, default.threshold_db)
    gate = query.get("gate")
    if gate is not None:
        if gate not in ("on", "off"):
            raise BadRequest(f"gate must be 'on' or 'off', not {gate!r}")
        settings.enabled = gate == "on"
    try:
        if "gate_silence_ms" in query:
            settings.silence_ms = int(query["gate_silence_ms"])
        if "gate_threshold_db" in query:
            settings.threshold_db = float(query["gate_threshold_db"])
    except ValueError:
        raise BadRequest("gate_silence_ms must be an integer and gate_threshold_db a number") from None
    if not 0 <= settings.silence_ms <= 10_000 or not -120 <= settings.threshold_db <= 0:
        raise BadRequest("gate_silence_ms must be within 0..10000 and gate_threshold_db within -120..0")
    return settings


def basic_auth_key(authorization: str) -> str | None:
    """The API key in an ``Authorization: Basic`` header: the password, or the user name when there is none.

    Kyutai's client connects with aiohttp, which sends a URL's user information (``ws://user:KEY@host``)
    this way and can send no other header; None when the header is absent, another scheme, or malformed.
    """
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        user, _, password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password or user or None


async def _admit(ws: WebSocket, auth: ApiKeyAuth) -> bool:
    """The shared key check (headers, ``?api_key=``), plus the key as HTTP Basic credentials."""
    basic = basic_auth_key(ws.headers.get("authorization", ""))
    if basic is not None and auth.accepts(basic):
        return True
    return await auth.check_websocket(ws)  # refuses (1008) unless a header or the query has the key


def _not_served(method: str, path: str) -> dict[str, str]:
    return {
        "detail": f"{method} {path} is not served by the Moshi worker: Moshi is speech to speech, so it serves "
        f"{' and '.join(ROUTES)} only; the text-to-speech routes are the CSM, Chatterbox and Piper workers' "
        "(workers/PROTOCOL.md)"
    }


async def _refuse(ws: WebSocket, code: int, reason: str) -> None:
    logger.warning(f"refused a conversation: {reason}")
    with suppress(Exception):
        await ws.send_bytes(bytes([ERROR]) + reason.encode())
        await ws.close(code=code, reason=reason)


async def _send_loop(ws: WebSocket, conversation: Conversation, codec: Any) -> None:
    while (output := await conversation.outbox.get()) is not None:
        audio = codec.encode(output.pcm)
        if audio:
            await ws.send_bytes(bytes([AUDIO]) + audio)
        if output.text:
            await ws.send_bytes(bytes([TEXT]) + output.text.encode())


async def _receive_loop(ws: WebSocket, conversation: Conversation, codec: Any) -> None:
    async def error(message: str) -> None:
        logger.warning(f"slot {conversation.slot}: {message}")
        await ws.send_bytes(bytes([ERROR]) + message.encode())

    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data is None:
            await error("text messages are not part of this protocol: send binary, kind byte first")
            continue
        if not data:
            await error("empty message")
            continue
        if len(data) > MAX_MESSAGE_BYTES:
            await error(f"message of {len(data)} bytes refused: at most {MAX_MESSAGE_BYTES}")
            continue
        kind = data[0]
        if kind != AUDIO:
            await error(f"unknown message kind 0x{kind:02x}: clients send 0x01 (audio)")
            continue
        try:
            samples = codec.decode(data[1:])
        except ValueError as e:
            if codec.name == "opus":  # the Ogg stream cannot be resynchronised: end this conversation
                await _refuse(ws, WS_INVALID_PAYLOAD, f"invalid Ogg/Opus audio: {e}")
                return
            await error(f"invalid audio: {e}")
            continue
        if len(samples) and not conversation.feed(samples):
            await error("too much audio queued: send audio in real time")


def create_app(
    frame_loop: FrameLoop, auth: ApiKeyAuth, *, device: str, gate: GateSettings, admission: Admission | None = None
) -> FastAPI:
    """The worker's app around a loaded (and warmed-up) engine.

    ``admission``: the fleet's session limit and drain state (default: the engine's slots, never draining);
    its ``max_sessions`` must not exceed the slots.
    """
    admission = admission or Admission(max_sessions=frame_loop.capacity)
    app = FastAPI(title="vivavoce Moshi worker")
    engine = frame_loop.engine
    conversations = {"finished": 0, "refused": 0}
    loop_task: list[asyncio.Task] = []

    # Startup and shutdown handlers rather than a lifespan: the fleet's serve() adds the registry entry's
    # start and removal as handlers of the same kind, which FastAPI skips when a lifespan is given.
    async def start_frames() -> None:
        loop_task.append(asyncio.create_task(frame_loop.run()))

    async def stop_frames() -> None:
        for task in loop_task:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    app.router.add_event_handler("startup", start_frames)
    app.router.add_event_handler("shutdown", stop_frames)

    def live() -> dict[str, Any]:
        stats = frame_loop.stats()
        return {
            "engine": engine.name,
            "protocol": PROTOCOL,
            "sample_rate": SAMPLE_RATE,
            "weights": engine.weights,
            # The synthesis workers' requests waiting to start; here the input frames waiting for the model
            # (a conversation never waits for a slot: a full worker refuses it).
            "queue_depth": stats["queued_frames"],
            "requests": dict(conversations),
            **stats,
            "max_sessions": admission.max_sessions,
            "state": "draining" if admission.draining else "ready",
        }

    app.include_router(health_router(model=engine.name, device=device, extra=live))

    @app.exception_handler(404)
    async def not_found(request: Request, _exc: Exception) -> JSONResponse:
        return JSONResponse(_not_served(request.method, request.url.path), status_code=404)

    async def refuse(ws: WebSocket, code: int, reason: str) -> None:
        conversations["refused"] += 1
        await _refuse(ws, code, reason)

    @app.websocket("/api/chat")
    async def chat(ws: WebSocket) -> None:
        if not await _admit(ws, auth):
            return
        await ws.accept()
        codec_name = ws.query_params.get("codec", "opus")
        if codec_name not in CODECS:
            await refuse(ws, WS_POLICY_VIOLATION, f"unknown codec {codec_name!r}: use one of {', '.join(CODECS)}")
            return
        try:
            settings = gate_settings(ws.query_params, gate)
        except BadRequest as e:
            await refuse(ws, WS_POLICY_VIOLATION, str(e))
            return
        refusal = admission.refusal()
        if refusal is not None:  # before the handshake byte: the agent tries another worker
            reason = refusal if admission.draining else f"server full: {refusal}"
            await refuse(ws, TRY_AGAIN_LATER, reason)
            return
        admission.active += 1  # counted before the first await, so two handshakes cannot both take the last slot
        conversation = await frame_loop.join(settings)
        if conversation is None:  # only if admission allows more than the slots
            admission.active -= 1
            await refuse(ws, TRY_AGAIN_LATER, f"server full: {frame_loop.capacity} conversations in progress")
            return
        codec = CODECS[codec_name]()
        sender = asyncio.create_task(_send_loop(ws, conversation, codec))
        try:
            await ws.send_bytes(bytes([HANDSHAKE]))
            await _receive_loop(ws, conversation, codec)
        except WebSocketDisconnect:
            pass
        finally:
            admission.active -= 1
            await frame_loop.leave(conversation)
            conversations["finished"] += 1
            conversation.outbox.put_nowait(None)
            with suppress(Exception):
                await sender
            with suppress(Exception):
                await ws.close()

    @app.websocket("/{path:path}")  # after /api/chat: every other socket
    async def not_served(ws: WebSocket, path: str) -> None:
        body = _not_served("WS", ws.url.path)
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(JSONResponse(body, status_code=404))
        else:  # a server without the denial extension: the close reason is all a client gets (<= 123 bytes)
            await ws.accept()
            await ws.close(code=WS_POLICY_VIOLATION, reason="not served by the Moshi worker: use /api/chat")

    return app
