"""Phone calls: Twilio's voice webhook and Media Streams WebSocket, serving one bot file.

``POST /twilio/voice`` checks ``X-Twilio-Signature`` (the twilio SDK's ``RequestValidator``) and answers
TwiML that connects the call to ``wss://PUBLIC_HOST/twilio/ws`` with a short-lived per-call token.
``WS /twilio/ws`` checks that token in the stream's ``start`` message before any pipeline starts, then
runs the bot with pipecat's ``FastAPIWebsocketTransport`` and a hardened ``TwilioFrameSerializer``.
Each call is its own pipeline: nothing one caller sends reaches another call.

With a registry (agent hosts sharing a Redis, :mod:`vivavoce.call_store`) the TwiML's ``<Connect>`` also
names ``action="PUBLIC/twilio/continue"``: Twilio requests it when the stream ends. A call whose host
recorded its end is hung up there; one whose stream ended without it (its host died) is connected again,
through the load balancer, to a live host, which goes on with the call's context from Redis.
"""

from __future__ import annotations

import asyncio
import threading
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
from vivavoce.live_sessions import LiveCalls, LiveSessions, check_session_id
from vivavoce.session import Session
from vivavoce.transports.call_tokens import CallTokens, InvalidCallToken
from vivavoce.transports.catalog import TwilioTransportConfig
from vivavoce.transports.pausable_websocket import PausableFastAPIWebsocketTransport
from vivavoce.transports.twilio_call_control import TwilioCallControl
from vivavoce.transports.twilio_stream import MAX_MESSAGE_BYTES, PlayoutMarks, TwilioStreamSerializer, parse_message
from vivavoce.turns import Turn

if TYPE_CHECKING:
    from vivavoce.call_store import RedisCalls
    from vivavoce.server import ServeContext

TWILIO_SAMPLE_RATE = 8000
HANDSHAKE_TIMEOUT_SECS = 10.0
MAX_MESSAGES_BEFORE_START = 50
POLICY_VIOLATION = 1008  # WebSocket close code: the stream is not allowed
CALL_OVER = {"completed", "busy", "failed", "no-answer", "canceled"}
"""Twilio's CallStatus values of a call that has ended: its action gets a hang-up at once."""
TRANSFERRED = "transferred"


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
        live: LiveCalls | None = None,
        registry: RedisCalls | None = None,
        stopping: threading.Event | None = None,
    ):
        """Serve ``bot``; ``observers`` gives each call's pipeline more observers; ``on_turn`` gets every
        completed turn of every call (metrics); ``live`` is shared with the other serving processes;
        ``registry``: the Redis shared with other agent hosts (then also ``live``); ``stopping``: set when
        this host stops (with a registry its calls then go on on other hosts)."""
        self.bot = bot
        self._on_turn = on_turn
        self.settings = settings
        self.registry = registry
        self._stopping = stopping or threading.Event()
        self.tokens = CallTokens(
            secret=settings.auth_token.encode() if settings.auth_token else None,
            ttl_secs=settings.token_ttl_secs,
            shared=registry.shared_secret if registry else None,
        )
        self.calls: dict[str, CallRecord] = {}
        self.live = live or registry or LiveSessions()
        self._observers = observers
        self._validator = RequestValidator(settings.auth_token) if settings.auth_token else None
        if settings.skip_signature:
            logger.warning("INSECURE: Twilio webhook signatures are NOT checked (--insecure-skip-signature)")

    def router(self) -> APIRouter:
        """The FastAPI routes: POST /twilio/voice, WS /twilio/ws and, with a registry, POST /twilio/continue."""
        router = APIRouter()
        router.add_api_route("/twilio/voice", self.voice_webhook, methods=["POST"])
        router.add_api_websocket_route("/twilio/ws", self.media_stream)
        if self.registry is not None:
            router.add_api_route("/twilio/continue", self.continue_call, methods=["POST"])
        return router

    async def voice_webhook(self, request: Request) -> Response:
        """Twilio's voice webhook: verify the signature, answer TwiML connecting the call to the stream."""
        params = await self._signed_form(request, "voice webhook")
        if isinstance(params, Response):
            return params
        call_sid = params["CallSid"]
        logger.info(f"Call {call_sid} from {params.get('From', '?')}: connecting to {self.settings.stream_url}")
        return self._connect(call_sid)

    async def continue_call(self, request: Request) -> Response:
        """``<Connect action>``: the call's stream ended. Hang up a call that ended; connect again one whose
        host died (it did not record the call's end), once that host's lease on it has expired."""
        params = await self._signed_form(request, "stream's action")
        if isinstance(params, Response):
            return params
        assert self.registry is not None
        call_sid = params["CallSid"]
        try:
            check_session_id(call_sid)  # it names keys in the registry
        except ValueError as e:
            return Response(str(e), status_code=400, media_type="text/plain")
        detail = ", ".join(f"{k} {params[k]}" for k in ("CallStatus", "StreamSid", "StreamError") if params.get(k))
        if params.get("CallStatus") in CALL_OVER:
            logger.info(f"Call {call_sid}: its stream ended with the call ({detail})")
            return _twiml(_hang_up())
        ended = await self._await_lease(call_sid)
        if ended == TRANSFERRED:  # the call follows its new TwiML: nothing more to do here
            logger.info(f"Call {call_sid}: its stream ended with its transfer")
            return _twiml(VoiceResponse())
        if ended:
            logger.info(f"Call {call_sid}: its stream ended because the call did ({ended}): hanging up")
            return _twiml(_hang_up())
        logger.warning(f"Call {call_sid}: its stream ended but the call did not ({detail}): its agent host died? "
                       f"Connecting it again to {self.settings.stream_url}")
        return self._connect(call_sid)

    async def _await_lease(self, call_sid: str) -> str | None:
        """How the call ended, or None (go on with it) once no host holds its lease any more.

        A dead host's lease lasts until it expires; a live host that is ending the call records the end
        before it releases the lease. Redis failing: go on (a caller left in silence is the worse outcome).
        """
        assert self.registry is not None
        loop = asyncio.get_running_loop()
        patience = self.registry.lease_secs + 2
        deadline = loop.time() + patience
        try:
            while True:
                ended = await asyncio.to_thread(self.registry.ended, call_sid)
                if ended or not await asyncio.to_thread(self.registry.is_claimed, call_sid):
                    return ended
                if loop.time() > deadline:
                    logger.warning(f"Call {call_sid}: its lease is still held after {patience:.0f} s")
                    return None
                await asyncio.sleep(0.2)
        except ConnectionError as e:  # RegistryUnavailableError
            logger.warning(f"Call {call_sid}: the call registry does not answer ({e}): connecting it again")
            return None

    async def _signed_form(self, request: Request, what: str) -> dict[str, str] | Response:
        """The request's form once its Twilio signature is checked and it names a call; else the error."""
        form = await request.form()
        params = {key: str(value) for key, value in form.items()}
        if not self.settings.skip_signature:
            signature = request.headers.get("X-Twilio-Signature", "")
            # Twilio signs the URL it called: the public one, not the one behind the tunnel.
            url = self.settings.public_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if not signature or not self._validator or not self._validator.validate(url, params, signature):
                logger.warning(f"Rejected a {what} with a {'wrong' if signature else 'missing'} signature")
                return Response("invalid Twilio signature", status_code=403, media_type="text/plain")
        if not params.get("CallSid", "").startswith("CA"):
            return Response("missing CallSid", status_code=400, media_type="text/plain")
        return params

    def _connect(self, call_sid: str) -> Response:
        """TwiML connecting the call to the stream with a fresh token (and, with a registry, the action)."""
        response = VoiceResponse()
        action = f"{self.settings.public_url}/twilio/continue" if self.registry is not None else None
        connect = Connect(action=action) if action else Connect()
        stream = Stream(url=self.settings.stream_url)
        stream.parameter(name="token", value=self.tokens.issue(call_sid))
        connect.append(stream)
        response.append(connect)
        return _twiml(response)

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
            # Off the event loop: a claim is a file or a Redis round trip, and other calls' audio flows here.
            claimed = await asyncio.to_thread(self.live.claim, call_sid)
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
            await asyncio.to_thread(self.live.release, call_sid)

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
            keep_call=self._handing_over,
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
        history = await self._history(call_sid)
        session = Session(
            self.bot,
            transport,
            audio_out_sample_rate=TWILIO_SAMPLE_RATE,
            observers=self._observers(record) if self._observers else (),
            on_turn=self._on_turn,
            after_input=[DTMFAggregator(enable_direct_mode=True)],
            before_output=[marks],
            narrowband_input=True,
            history=history,
        )
        control = None
        if can_hang_up:
            control = _CallControl(
                account_sid=settings.account_sid or "",
                auth_token=settings.auth_token or "",
                call_sid=call_sid,
                api_base_url=settings.api_base_url,
                transfer_to=settings.transfer_to,
            )
            control.offer_tools(session.conversation)
        keeper = None
        if self.registry is not None:
            from vivavoce.call_store import ContextKeeper

            keeper = ContextKeeper(self.registry, call_sid, session.conversation.context)
            keeper.follow(session.conversation.user_aggregator, session.conversation.assistant_aggregator)
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
        # Not reached when the task is cancelled: the call is not over then.
        if keeper is not None:
            await keeper.flush()
            if self._handing_over():
                logger.info(f"Call {call_sid}: this host stops: the call goes on on another (its <Connect action>)")
                return
            reason = TRANSFERRED if control and control.transferring else "hung up" if serializer.stopped else "ended"
            await self._record_end(call_sid, reason)

    def _handing_over(self) -> bool:
        """Whether calls ending now go on on other hosts: this host stops, and they share a registry."""
        return self.registry is not None and self._stopping.is_set()

    async def _history(self, call_sid: str) -> list[dict[str, Any]]:
        """The call's earlier LLM context from the registry: it goes on from another host."""
        if self.registry is None:
            return []
        try:
            history = await asyncio.to_thread(self.registry.load_context, call_sid)
        except (ConnectionError, ValueError) as e:  # RegistryUnavailableError, or not JSON
            logger.warning(f"Call {call_sid}: cannot read its earlier context from the call registry: {e}")
            return []
        if history:
            logger.info(
                f"Call {call_sid}: continues on this host with its context restored from the call registry "
                f"({len(history)} earlier messages); no greeting"
            )
        return history

    async def _record_end(self, call_sid: str, reason: str) -> None:
        assert self.registry is not None
        try:
            await asyncio.to_thread(self.registry.end_call, call_sid, reason)
        except ConnectionError as e:  # RegistryUnavailableError
            logger.warning(f"Call {call_sid}: cannot record its end ({reason}) in the call registry: {e}")


def serve(app: FastAPI, context: ServeContext) -> None:
    """The twilio transport's routes on ``app`` (``app.state.calls``); ``ValueError`` says what to configure."""
    assert isinstance(context.bot.spec.transport, TwilioTransportConfig)
    settings = TwilioServerSettings.from_bot(
        context.bot.spec.transport, public_url=context.public_url, skip_signature=context.skip_signature
    )
    calls = TwilioCalls(
        context.bot,
        settings,
        on_turn=context.on_turn,
        live=context.live,
        registry=context.registry,
        stopping=context.stopping,
    )
    app.include_router(calls.router())
    app.state.calls = calls


class _CallControl(TwilioCallControl):
    """The call's REST tools, remembering a transfer: the call's end is then recorded as one."""

    transferring = False

    async def transfer(self, number: str | None = None) -> None:
        """See :meth:`TwilioCallControl.transfer`."""
        # Set first: the redirect ends the stream, maybe before the REST call returns.
        self.transferring = True
        try:
            await super().transfer(number)
        except BaseException:
            self.transferring = False
            raise


class _Rejected(Exception):
    """The stream is closed before any pipeline starts; the message is the close reason."""


def _hang_up() -> VoiceResponse:
    response = VoiceResponse()
    response.hangup()
    return response


def _twiml(response: VoiceResponse) -> Response:
    return Response(str(response), media_type="application/xml")


async def _close(websocket: WebSocket, reason: str) -> None:
    try:
        await websocket.close(code=POLICY_VIOLATION, reason=reason[:120])
    except RuntimeError:  # already closed by the other side
        pass
