"""Phone calls: Twilio's voice webhook and Media Streams WebSocket, serving one bot file.

``POST /twilio/voice`` checks ``X-Twilio-Signature`` (the twilio SDK's ``RequestValidator``) and answers
TwiML that connects the call to ``wss://PUBLIC_HOST/twilio/ws`` with a short-lived per-call token.
``WS /twilio/ws`` checks that token in the stream's ``start`` message before any pipeline starts, then
runs the bot with pipecat's ``FastAPIWebsocketTransport`` and a hardened ``TwilioFrameSerializer``.
Each call is its own pipeline: nothing one caller sends reaches another call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request, Response, WebSocket, WebSocketDisconnect
from loguru import logger
from pipecat.observers.base_observer import BaseObserver
from pipecat.processors.aggregators.dtmf_aggregator import DTMFAggregator
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

from vivavoce.botfile import Bot
from vivavoce.live_sessions import LiveSessions
from vivavoce.session import Session
from vivavoce.transports.call_tokens import CallTokens, InvalidCallToken
from vivavoce.transports.catalog import TwilioTransportConfig
from vivavoce.transports.pausable_websocket import PausableFastAPIWebsocketTransport
from vivavoce.transports.twilio_call_control import TwilioCallControl
from vivavoce.transports.twilio_stream import MAX_MESSAGE_BYTES, PlayoutMarks, TwilioStreamSerializer, parse_message
from vivavoce.turns import Turn

if TYPE_CHECKING:
    from vivavoce.server import ServeContext

TWILIO_SAMPLE_RATE = 8000
HANDSHAKE_TIMEOUT_SECS = 10.0
MAX_MESSAGES_BEFORE_START = 50
POLICY_VIOLATION = 1008  # WebSocket close code: the stream is not allowed


@dataclass
class TwilioServerSettings:
    """How the server meets Twilio: where it is reached, and whether it checks signatures."""

    public_url: str
    auth_token: str | None
    account_sid: str | None = None
    skip_signature: bool = False
    api_base_url: str | None = None
    transfer_to: str | None = None
    token_ttl_secs: float = 60.0
    input_chunk_ms: int = 40

    @classmethod
    def from_bot(
        cls, config: TwilioTransportConfig, *, public_url: str | None, skip_signature: bool
    ) -> TwilioServerSettings:
        """Settings from the bot file's transport section, with the command line's overrides."""
        url = public_url or config.public_url
        if not url:
            raise ValueError("a public URL is needed (--public-url, VIVAVOCE_PUBLIC_URL, or transport.public_url)")
        token = config.auth_token.get_secret_value() if config.auth_token else None
        if not token and not skip_signature:
            raise ValueError(
                "transport.auth_token is needed to check Twilio's signatures "
                "(auth_token: ${TWILIO_AUTH_TOKEN}); --insecure-skip-signature is for local development only"
            )
        return cls(
            public_url=url.rstrip("/"),
            auth_token=token,
            account_sid=config.account_sid,
            skip_signature=skip_signature,
            api_base_url=config.api_base_url,
            transfer_to=config.transfer_to,
            token_ttl_secs=config.stream_token_ttl_secs,
            input_chunk_ms=config.input_chunk_ms,
        )

    @property
    def stream_url(self) -> str:
        """The Media Streams URL put in the TwiML (always wss, as Twilio requires)."""
        return f"wss://{urlsplit(self.public_url).netloc}/twilio/ws"


@dataclass
class CallRecord:
    """A live call: its stream, what its serializer dropped, and its playout marks (logs and tests read them)."""

    call_sid: str
    stream_sid: str
    serializer: TwilioStreamSerializer
    marks: PlayoutMarks
    extras: dict[str, Any] = field(default_factory=dict)


class TwilioCalls:
    """The webhook, the stream endpoint and the live calls of one bot."""

    def __init__(
        self,
        bot: Bot,
        settings: TwilioServerSettings,
        *,
        observers: Callable[[CallRecord], list[BaseObserver]] | None = None,
        on_turn: Callable[[Turn], None] | None = None,
        live: LiveSessions | None = None,
    ):
        """Serve ``bot``; ``observers`` gives each call's pipeline more observers; ``on_turn`` gets every
        completed turn of every call (metrics); ``live`` is shared with the other serving processes."""
        self.bot = bot
        self._on_turn = on_turn
        self.settings = settings
        self.tokens = CallTokens(
            secret=settings.auth_token.encode() if settings.auth_token else None, ttl_secs=settings.token_ttl_secs
        )
        self.calls: dict[str, CallRecord] = {}
        self.live = live or LiveSessions()
        self._observers = observers
        self._validator = RequestValidator(settings.auth_token) if settings.auth_token else None
        if settings.skip_signature:
            logger.warning("INSECURE: Twilio webhook signatures are NOT checked (--insecure-skip-signature)")

    def router(self) -> APIRouter:
        """The FastAPI routes: POST /twilio/voice and WS /twilio/ws."""
        router = APIRouter()
        router.add_api_route("/twilio/voice", self.voice_webhook, methods=["POST"])
        router.add_api_websocket_route("/twilio/ws", self.media_stream)
        return router

    async def voice_webhook(self, request: Request) -> Response:
        """Twilio's voice webhook: verify the signature, answer TwiML connecting the call to the stream."""
        form = await request.form()
        params = {key: str(value) for key, value in form.items()}
        if not self.settings.skip_signature:
            signature = request.headers.get("X-Twilio-Signature", "")
            # Twilio signs the URL it called: the public one, not the one behind the tunnel.
            url = self.settings.public_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if not signature or not self._validator or not self._validator.validate(url, params, signature):
                logger.warning(f"Rejected a voice webhook with a {'wrong' if signature else 'missing'} signature")
                return Response("invalid Twilio signature", status_code=403, media_type="text/plain")
        call_sid = params.get("CallSid", "")
        if not call_sid.startswith("CA"):
            return Response("missing CallSid", status_code=400, media_type="text/plain")
        response = VoiceResponse()
        connect = Connect()
        stream = Stream(url=self.settings.stream_url)
        stream.parameter(name="token", value=self.tokens.issue(call_sid))
        connect.append(stream)
        response.append(connect)
        logger.info(f"Call {call_sid} from {params.get('From', '?')}: connecting to {self.settings.stream_url}")
        return Response(str(response), media_type="application/xml")

    async def media_stream(self, websocket: WebSocket) -> None:
        """One call's media stream: handshake, token check, then the bot's pipeline until the call ends."""
        await websocket.accept()
        try:
            start = await asyncio.wait_for(self._read_start(websocket), HANDSHAKE_TIMEOUT_SECS)
        except (TimeoutError, asyncio.TimeoutError):
            await _close(websocket, "no start message")
            return
        except WebSocketDisconnect:
            return
        except _Rejected as e:
            await _close(websocket, str(e))
            return
        except Exception as e:  # anything else a caller can send before start: refuse, never crash
            logger.warning(f"Twilio stream refused: malformed handshake ({e.__class__.__name__}: {e})")
            await _close(websocket, "malformed handshake")
            return
        call_sid = start["call_sid"]
        try:
            claimed = self.live.claim(call_sid)
        except ValueError as e:
            await _close(websocket, str(e))
            return
        if not claimed:
            logger.warning(f"Twilio stream for {call_sid} refused: the call already has a live stream")
            await _close(websocket, "the call already has a live stream")
            return
        try:
            await self._run_call(websocket, start)
        finally:
            self.live.release(call_sid)

    async def _read_start(self, websocket: WebSocket) -> dict[str, Any]:
        """Read up to the ``start`` message; validate it and the call's token."""
        for _ in range(MAX_MESSAGES_BEFORE_START):
            received = await websocket.receive()
            if received.get("type") == "websocket.disconnect":
                raise WebSocketDisconnect(received.get("code", 1000))
            raw = received.get("text") or received.get("bytes") or ""
            if len(raw) > MAX_MESSAGE_BYTES:
                raise _Rejected("oversized message before start")
            message = parse_message(raw)
            if message is None:
                logger.warning(f"Twilio stream: invalid JSON before start: {raw[:80]!r}")
                continue
            event = message.get("event") if isinstance(message, dict) else None
            if event == "connected":
                continue
            if event != "start":
                logger.warning(f"Twilio stream: {event!r} before start, ignored")
                continue
            start = message.get("start")
            if not isinstance(start, dict):
                raise _Rejected("start message without 'start'")
            stream_sid = start.get("streamSid") or message.get("streamSid")
            call_sid = start.get("callSid")
            parameters = start.get("customParameters") or {}
            if not isinstance(stream_sid, str) or not isinstance(call_sid, str) or not isinstance(parameters, dict):
                raise _Rejected("start message without streamSid/callSid/customParameters")
            try:
                self.tokens.verify(call_sid, parameters.get("token"))
            except InvalidCallToken as e:
                logger.warning(f"Twilio stream for {call_sid} refused: {e}")
                raise _Rejected(str(e)) from None
            return {"stream_sid": stream_sid, "call_sid": call_sid, "parameters": parameters}
        raise _Rejected("no start message")

    async def _run_call(self, websocket: WebSocket, start: dict[str, Any]) -> None:
        call_sid, stream_sid = start["call_sid"], start["stream_sid"]
        settings = self.settings
        can_hang_up = bool(settings.account_sid and settings.auth_token)
        serializer = TwilioStreamSerializer(
            stream_sid=stream_sid,
            call_sid=call_sid,
            account_sid=settings.account_sid,
            auth_token=settings.auth_token,
            base_url=settings.api_base_url,
            params=TwilioStreamSerializer.InputParams(auto_hang_up=can_hang_up),
        )
        transport = PausableFastAPIWebsocketTransport(
            websocket,
            FastAPIWebsocketParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                add_wav_header=False,
                serializer=serializer,
                audio_out_10ms_chunks=2,  # Twilio's 20 ms media frames
            ),
            audio_in_chunk_secs=settings.input_chunk_ms / 1000,
        )
        marks = PlayoutMarks(stream_sid)
        record = CallRecord(call_sid=call_sid, stream_sid=stream_sid, serializer=serializer, marks=marks)
        session = Session(
            self.bot,
            transport,
            audio_out_sample_rate=TWILIO_SAMPLE_RATE,
            observers=self._observers(record) if self._observers else (),
            on_turn=self._on_turn,
            after_input=[DTMFAggregator(enable_direct_mode=True)],
            before_output=[marks],
            narrowband_input=True,
        )
        if can_hang_up:
            TwilioCallControl(
                account_sid=settings.account_sid or "",
                auth_token=settings.auth_token or "",
                call_sid=call_sid,
                api_base_url=settings.api_base_url,
                transfer_to=settings.transfer_to,
            ).offer_tools(session.conversation)
        session.end_when("on_client_disconnected")
        self.calls[call_sid] = record
        logger.info(f"Call {call_sid}: stream {stream_sid} started")
        try:
            await session.run()
        except Exception as e:  # one call's failure ends that call only
            logger.exception(f"Call {call_sid} failed: {e}")
        finally:
            if self.calls.get(call_sid) is record:
                del self.calls[call_sid]
            if sum(serializer.rejected.values()):
                logger.info(f"Call {call_sid}: dropped messages {dict(serializer.rejected)}")
            logger.info(f"Call {call_sid} ended")


def serve(app: FastAPI, context: ServeContext) -> None:
    """The twilio transport's routes on ``app`` (``app.state.calls``); ``ValueError`` says what to configure."""
    assert isinstance(context.bot.spec.transport, TwilioTransportConfig)
    settings = TwilioServerSettings.from_bot(
        context.bot.spec.transport, public_url=context.public_url, skip_signature=context.skip_signature
    )
    calls = TwilioCalls(context.bot, settings, on_turn=context.on_turn, live=context.live)
    app.include_router(calls.router())
    app.state.calls = calls


class _Rejected(Exception):
    """The stream is closed before any pipeline starts; the message is the close reason."""


async def _close(websocket: WebSocket, reason: str) -> None:
    try:
        await websocket.close(code=POLICY_VIOLATION, reason=reason[:120])
    except RuntimeError:  # already closed by the other side
        pass
