"""Browser sessions: SmallWebRTC signalling and the web playground, serving one bot file.

``POST /api/offer`` takes a WebRTC offer (pipecat's ``SmallWebRTCRequest``: ``sdp``, ``type``, ``pc_id``...)
and answers with pipecat's ``SmallWebRTCRequestHandler``; ``PATCH /api/offer`` adds trickled ICE candidates.
Each new peer connection runs its own pipeline on a pausable ``SmallWebRTCTransport`` with RTVI on,
so transcripts, the bot's text and per-turn latency reach the page over the data channel. Requests
are checked before pipecat sees them (content type, size, JSON, fields, SDP): bad input gets a 4xx
with a message and never touches another session.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

from aiortc.sdp import SessionDescription
from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from loguru import logger
from pipecat.observers.base_observer import BaseObserver
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import IceServer, SmallWebRTCConnection
from pipecat.transports.smallwebrtc.request_handler import (
    IceCandidate,
    SmallWebRTCPatchRequest,
    SmallWebRTCRequest,
    SmallWebRTCRequestHandler,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vivavoce.botfile import Bot
from vivavoce.live_sessions import LiveSessions
from vivavoce.session import Session
from vivavoce.transports.catalog import WebRTCTransportConfig
from vivavoce.transports.webrtc_pausable import PausableSmallWebRTCTransport
from vivavoce.turns import Turn

if TYPE_CHECKING:
    from vivavoce.server import ServeContext

OUTPUT_SAMPLE_RATE = 48000
"""Opus runs at 48 kHz: the TTS resamples once to it and the encoder takes it as is."""
MAX_BODY_BYTES = 64 * 1024
"""Well above a browser's offer (a few KB) and a PATCH (a few hundred bytes per candidate)."""
PLAYGROUND_FILES = {"app.js": "text/javascript", "style.css": "text/css"}


class OfferBody(BaseModel):
    """``POST /api/offer``: pipecat's ``SmallWebRTCRequest`` fields (``requestData`` accepted too)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    sdp: str = Field(min_length=1, max_length=MAX_BODY_BYTES)
    type: Literal["offer"]
    pc_id: str | None = Field(None, max_length=200)
    restart_pc: bool | None = None
    request_data: Any = Field(None, alias="requestData")


class CandidateBody(BaseModel):
    """One trickled ICE candidate; an empty ``candidate`` marks the end of candidates."""

    model_config = ConfigDict(extra="forbid")

    candidate: str = Field(max_length=1000)
    sdp_mid: str = Field(max_length=64)
    sdp_mline_index: int = Field(ge=0, le=64)


class PatchBody(BaseModel):
    """``PATCH /api/offer``: pipecat's ``SmallWebRTCPatchRequest``."""

    model_config = ConfigDict(extra="forbid")

    pc_id: str = Field(min_length=1, max_length=200)
    candidates: list[CandidateBody] = Field(max_length=64)


@dataclass
class WebRTCSession:
    """A live browser session, for /health and the tests."""

    pc_id: str
    connection: SmallWebRTCConnection
    started: float
    task: asyncio.Task | None = None
    connected_s: float | None = None

    @property
    def live_id(self) -> str:
        """The session's name in the live-session registry (pipecat's pc_id has a '#')."""
        return re.sub(r"[^A-Za-z0-9_.-]", "-", self.pc_id)


class BadRequest(Exception):
    """A request refused before it reaches pipecat; ``status`` and the message go to the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class WebRTCSessions:
    """The signalling endpoints, the playground and the live sessions of one bot."""

    def __init__(
        self,
        bot: Bot,
        config: WebRTCTransportConfig,
        *,
        observers: Callable[[WebRTCSession], list[BaseObserver]] | None = None,
        on_turn: Callable[[Turn], None] | None = None,
        live: LiveSessions | None = None,
    ):
        """Serve ``bot``; ``observers`` gives each session's pipeline more observers; ``on_turn`` gets
        every completed turn of every session (metrics); ``live`` counts the sessions of every process
        serving the bot (``max_sessions`` applies to them all)."""
        self.bot = bot
        self.config = config
        self.live = live or LiveSessions()
        self.sessions: dict[str, WebRTCSession] = {}
        self._observers = observers
        self._on_turn = on_turn
        self.handler = SmallWebRTCRequestHandler(ice_servers=[_ice_server(s) for s in self.ice_servers()])

    def ice_servers(self) -> list[dict[str, Any]]:
        """The STUN/TURN servers as ``RTCIceServer`` dictionaries (what the browser's ``RTCPeerConnection`` takes)."""
        servers = []
        for server in self.config.ice_servers:
            entry: dict[str, Any] = {"urls": server.urls}
            if server.username:
                entry["username"] = server.username
            if server.credential:
                entry["credential"] = server.credential.get_secret_value()
            servers.append(entry)
        return servers

    def router(self) -> APIRouter:
        """The FastAPI routes: POST/PATCH /api/offer, GET /api/ice-servers, and the playground at /."""
        router = APIRouter()
        router.add_api_route("/api/offer", self.offer, methods=["POST"])
        router.add_api_route("/api/offer", self.patch, methods=["PATCH"])
        router.add_api_route("/api/ice-servers", self.ice_servers_route, methods=["GET"])
        if self.config.playground:
            router.add_api_route("/", self.playground_page, methods=["GET"])
            router.add_api_route("/playground/{name}", self.playground_file, methods=["GET"])
        return router

    async def ice_servers_route(self) -> dict[str, Any]:
        """The browser's ICE configuration (TURN credentials included: the browser needs them)."""
        return {"iceServers": self.ice_servers()}

    async def playground_page(self) -> Response:
        """The playground's page."""
        return Response(_playground_file("index.html"), media_type="text/html")

    async def playground_file(self, name: str) -> Response:
        """The playground's script and style sheet."""
        if name not in PLAYGROUND_FILES:
            raise HTTPException(status_code=404, detail=f"no playground file '{name}'")
        return Response(_playground_file(name), media_type=PLAYGROUND_FILES[name])

    async def offer(self, request: Request) -> Response:
        """A WebRTC offer: a new session (or a renegotiation of a live one); answers the SDP answer."""
        try:
            body = OfferBody.model_validate(await _json_body(request))
            _check_sdp(body.sdp)
            renegotiation = body.pc_id is not None and body.pc_id in self.sessions
            # Off the event loop: with a registry a count is a Redis round trip, and other calls' audio flows here.
            if not renegotiation and await asyncio.to_thread(self.live.count) >= self.config.max_sessions:
                raise BadRequest(503, f"the server is busy ({self.config.max_sessions} sessions): try again later")
        except BadRequest as e:
            return _error(e.status, str(e))
        except ValidationError as e:
            return _error(400, _validation_message(e))
        started = time.perf_counter()
        try:
            answer = await self.handler.handle_web_request(
                SmallWebRTCRequest(
                    sdp=body.sdp,
                    type=body.type,
                    pc_id=body.pc_id if renegotiation else None,
                    restart_pc=body.restart_pc,
                    request_data=body.request_data,
                ),
                lambda connection: self._start(connection, started),
            )
        except HTTPException as e:
            return _error(e.status_code, str(e.detail))
        except Exception as e:  # aiortc refused the offer (e.g. no ICE credentials or DTLS fingerprint)
            logger.warning(f"WebRTC offer refused: {e.__class__.__name__}: {e}")
            return _error(400, f"the offer was refused: {e}")
        if answer is None or answer["pc_id"] not in self.sessions:
            return _error(500, "the session could not start (see the server's log)")
        return JSONResponse(answer)

    async def patch(self, request: Request) -> Response:
        """Trickled ICE candidates for a live session."""
        try:
            body = PatchBody.model_validate(await _json_body(request))
        except BadRequest as e:
            return _error(e.status, str(e))
        except ValidationError as e:
            return _error(400, _validation_message(e))
        if body.pc_id not in self.sessions:
            return _error(404, f"no session with pc_id '{body.pc_id}'")
        try:
            await self.handler.handle_patch_request(
                SmallWebRTCPatchRequest(
                    pc_id=body.pc_id,
                    candidates=[IceCandidate(c.candidate, c.sdp_mid, c.sdp_mline_index) for c in body.candidates],
                )
            )
        except HTTPException as e:  # the session ended meanwhile
            return _error(e.status_code, str(e.detail))
        except Exception as e:  # a candidate aiortc cannot parse
            logger.warning(f"WebRTC candidates refused for {body.pc_id}: {e.__class__.__name__}: {e}")
            return _error(400, f"malformed ICE candidate: {e}")
        return JSONResponse({"status": "success"})

    async def _start(self, connection: SmallWebRTCConnection, started: float) -> None:
        """pipecat's handler calls this with each new peer connection: build its pipeline and run it."""
        try:
            self._run_session(connection, started)
        except Exception:
            await connection.disconnect()  # the offer gets a 500; nothing of the session is left running
            raise

    def _run_session(self, connection: SmallWebRTCConnection, started: float) -> None:
        peer = WebRTCSession(pc_id=connection.pc_id, connection=connection, started=started)
        transport = PausableSmallWebRTCTransport(
            connection, TransportParams(audio_in_enabled=True, audio_out_enabled=True)
        )
        session = Session(
            self.bot,
            transport,
            audio_out_sample_rate=OUTPUT_SAMPLE_RATE,
            observers=self._observers(peer) if self._observers else (),
            on_turn=self._on_turn,
            enable_rtvi=True,
        )

        @transport.event_handler("on_client_connected")
        async def _connected(_transport: Any, _client: Any) -> None:
            peer.connected_s = time.perf_counter() - started
            logger.info(f"WebRTC session {peer.pc_id}: connected in {peer.connected_s * 1000:.0f} ms")

        session.end_when("on_client_disconnected")
        self.sessions[peer.pc_id] = peer
        peer.task = asyncio.create_task(self._run(peer, session))

    async def _run(self, peer: WebRTCSession, session: Session) -> None:
        # Ids are unique: the claim only counts the session (off the loop: a Redis round trip with a registry).
        await asyncio.to_thread(self.live.claim, peer.live_id)
        try:
            await session.run()
        except Exception as e:  # one session's failure ends that session only
            logger.exception(f"WebRTC session {peer.pc_id} failed: {e}")
        finally:
            self.sessions.pop(peer.pc_id, None)
            await asyncio.to_thread(self.live.release, peer.live_id)
            await peer.connection.disconnect()
            logger.info(f"WebRTC session {peer.pc_id} ended")

    async def close(self) -> None:
        """End every session (server shutdown)."""
        tasks = [s.task for s in self.sessions.values() if s.task]
        await self.handler.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def serve(app: FastAPI, context: ServeContext) -> None:
    """The webrtc transport's routes on ``app`` (``app.state.webrtc``), its sessions ended at shutdown."""
    assert isinstance(context.bot.spec.transport, WebRTCTransportConfig)
    webrtc = WebRTCSessions(context.bot, context.bot.spec.transport, on_turn=context.on_turn, live=context.live)
    app.include_router(webrtc.router())
    app.router.add_event_handler("shutdown", webrtc.close)
    app.state.webrtc = webrtc


def _ice_server(entry: dict[str, Any]) -> IceServer:
    return IceServer(urls=entry["urls"], username=entry.get("username"), credential=entry.get("credential"))


def _playground_file(name: str) -> bytes:
    return resources.files("vivavoce.transports").joinpath("playground", name).read_bytes()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _validation_message(error: ValidationError) -> str:
    problems = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors()[:5]]
    return "invalid request: " + "; ".join(problems)


async def _json_body(request: Request) -> Any:
    """The request's JSON, read at most ``MAX_BODY_BYTES`` far."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise BadRequest(415, f"Content-Type must be application/json, not '{content_type or 'none'}'")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadRequest(413, f"the body is over {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest(413, f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(400, f"the body is not JSON: {e}") from None


def _check_sdp(sdp: str) -> None:
    """Refuse an SDP aiortc cannot parse, or one with no audio to listen to."""
    try:
        description = SessionDescription.parse(sdp)
    except Exception as e:
        raise BadRequest(400, f"malformed SDP: {e.__class__.__name__}: {e}") from None
    if not any(media.kind == "audio" for media in description.media):
        raise BadRequest(400, "the offer has no audio (m=audio) to talk with")
