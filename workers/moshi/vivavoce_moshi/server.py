"""``/api/chat``: Kyutai's Moshi protocol, several conversations per process; ``GET /health``.

Every binary message starts with a kind byte, as in moshi's own server:

- ``0x00`` handshake: sent by the server once the conversation has a slot and may start;
- ``0x01`` + audio: Ogg/Opus pages (24 kHz mono) both ways, or with ``?codec=pcm16`` raw PCM16 LE at 24 kHz
  (the server sends one 80 ms frame, 3840 bytes, per message);
- ``0x02`` + UTF-8: a piece of the model's text (server to client);
- ``0x05`` + UTF-8: an error (server to client), as in Kyutai's Rust server. A malformed message gets one
  and is dropped; a broken Opus stream or a full server gets one, then the socket closes with the reason.

Query parameters: ``api_key`` (or the ``X-API-Key`` / ``Authorization: Bearer`` headers), ``codec``
(``opus``, ``pcm16``), ``gate`` (``on``/``off``), ``gate_silence_ms``, ``gate_threshold_db``.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from loguru import logger

from vivavoce_moshi.codecs import CODECS
from vivavoce_moshi.frame_loop import Conversation, FrameLoop
from vivavoce_moshi.gate import GateSettings
from vivavoce_worker.auth import ApiKeyAuth
from vivavoce_worker.health import health_router

HANDSHAKE, AUDIO, TEXT, ERROR = 0x00, 0x01, 0x02, 0x05
MAX_MESSAGE_BYTES = 1 << 20
"""Larger client messages are refused (an error message; the socket stays open)."""

WS_UNSUPPORTED_DATA = 1003
WS_POLICY_VIOLATION = 1008
WS_INVALID_PAYLOAD = 1007
WS_TRY_AGAIN_LATER = 1013


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


def create_app(frame_loop: FrameLoop, auth: ApiKeyAuth, *, device: str, gate: GateSettings) -> FastAPI:
    """The worker's app around a loaded (and warmed-up) engine."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        task = asyncio.create_task(frame_loop.run())
        yield
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task

    app = FastAPI(title="vivavoce Moshi worker", lifespan=lifespan)
    app.include_router(
        health_router(
            model=frame_loop.engine.name, device=device, extra=lambda: {"family": "moshi"} | frame_loop.stats()
        )
    )

    @app.websocket("/api/chat")
    async def chat(ws: WebSocket) -> None:
        if not await auth.check_websocket(ws):
            return
        await ws.accept()
        codec_name = ws.query_params.get("codec", "opus")
        if codec_name not in CODECS:
            await _refuse(ws, WS_POLICY_VIOLATION, f"unknown codec {codec_name!r}: use one of {', '.join(CODECS)}")
            return
        try:
            settings = gate_settings(ws.query_params, gate)
        except BadRequest as e:
            await _refuse(ws, WS_POLICY_VIOLATION, str(e))
            return
        conversation = await frame_loop.join(settings)
        if conversation is None:
            await _refuse(ws, WS_TRY_AGAIN_LATER, f"server full: {frame_loop.capacity} conversations in progress")
            return
        codec = CODECS[codec_name]()
        sender = asyncio.create_task(_send_loop(ws, conversation, codec))
        try:
            await ws.send_bytes(bytes([HANDSHAKE]))
            await _receive_loop(ws, conversation, codec)
        except WebSocketDisconnect:
            pass
        finally:
            await frame_loop.leave(conversation)
            conversation.outbox.put_nowait(None)
            with suppress(Exception):
                await sender
            with suppress(Exception):
                await ws.close()

    return app
