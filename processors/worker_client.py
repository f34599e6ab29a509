"""pipecat TTS over a vivavoce model worker (``WS /v1/stream``, see workers/PROTOCOL.md).

``WorkerTTSService`` is the shared client: it sends one ``synthesize`` per sentence (request id
``<context id>/<n>``), plays the binary PCM16 frames that follow each ``start``, closes the audio
context once the turn is flushed and its last ``done`` arrived, and sends ``cancel`` for every
request of a context that an ``InterruptionFrame`` drops. Reconnects are pipecat's
(``WebsocketService``). Subclasses add their family's fields (CSM: conversation context; Chatterbox:
voice and expression settings).

The worker is one ``url``, or is picked from the fleet's registry (``registry`` + a
:class:`~vivavoce.worker_directory.Selector`, through a :class:`~vivavoce.worker_directory.WorkerRoute`):
pipecat's reconnect after a worker dies lands on another one, which is asked for what the dead one had
not said yet.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from loguru import logger
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import Frame, StartFrame, TTSAudioRawFrame, TTSStoppedFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import WebsocketTTSService
from pipecat.services.websocket_service import WebsocketService
from websockets.protocol import State

from vivavoce.frames import WorkerFailoverFrame
from vivavoce.worker_directory import PING_INTERVAL_SECS, PING_TIMEOUT_SECS, Selector, WorkerRoute

if TYPE_CHECKING:
    from vivavoce.processors.catalog import WorkerTTSConfig

Socket = TypeVar("Socket")

API_KEY_ENV = "VIVAVOCE_WORKER_API_KEY"
CHARS_PER_SEC = 14.0
"""A typical speaking rate, to tell how much of a sentence was heard when its worker died."""
QUIET_SECS = 10.0
"""How long a reply's audio may pause before pipecat ends the reply. Its default, 3 s, cut replies whose
worker was being replaced or was busy (bench/fleet.py); a reply whose requests are all done ends at once."""
ROUTED_RECONNECT = {"reconnect_backoff_min_wait": 0.5, "reconnect_backoff_max_wait": 2.0}
"""pipecat's waits between reconnect attempts, for a service routed by the registry: each attempt tries
other workers than the one that failed, so there is no reason to wait pipecat's 4-10 s between them."""


def worker_api_key(explicit: str | None = None, env: str = API_KEY_ENV) -> str | None:
    """The worker API key: ``explicit`` if given, else ``$VIVAVOCE_WORKER_API_KEY`` (None: no auth)."""
    return explicit or os.environ.get(env) or None


class WorkerEndpoint:
    """Where one pipecat websocket service finds its worker: a fixed ``url``, or a worker that a
    :class:`~vivavoce.worker_directory.WorkerRoute` picks from the ``registry`` by ``selector``; with the
    API key, and whether a fallback takes over when no worker answers."""

    def __init__(
        self,
        *,
        url: str | None,
        registry: str | None,
        selector: Selector | None,
        api_key: str | None,
        has_fallback: bool,
    ):
        """Exactly one of ``url`` and ``registry`` (which needs a ``selector``); ``api_key`` None reads
        the environment variable."""
        if (url is None) == (registry is None) or (registry is not None and selector is None):
            raise ValueError("a worker needs a url, or a registry and a selector")
        self.url = url
        """The worker in use (with a registry: the one picked last; None before the first)."""
        self.route = WorkerRoute(registry, selector) if registry else None
        self._api_key = worker_api_key(api_key)
        self._has_fallback = has_fallback

    @property
    def worker_key(self) -> str | None:
        """The registry key of the worker in use (None without a registry)."""
        return self.route.current.key if self.route and self.route.current else None

    @property
    def headers(self) -> dict[str, str]:
        """What a connection to a worker sends: the API key, if any."""
        return {"X-API-Key": self._api_key} if self._api_key else {}

    @property
    def where(self) -> str:
        """The worker in use, or before the first, what the registry is asked for."""
        return self.url or f"the registry {self.route.registry} ({self.route.selector})"

    async def connect(self, open_socket: Callable[[str, float | None], Awaitable[Socket]]) -> Socket:
        """``open_socket(url, timeout_secs)`` to the fixed ``url`` (timeout None: the opener's own), or to a
        worker the route picks (with the route's short timeout, trying others); ``url`` becomes that
        worker's."""
        if self.route is None:
            return await open_socket(self.url, None)
        socket = await self.route.connect(open_socket)
        self.url = self.route.current.url
        return socket

    async def open(self, service: WebsocketService) -> Any:
        """A socket from pipecat's ``service`` to the worker (routed ones get keepalive pings, so a
        vanished host is noticed); ``url`` becomes that worker's."""

        async def open_socket(worker_url: str, timeout_secs: float | None) -> Any:
            if timeout_secs is None:  # the fixed url
                return await service._websocket_connect(worker_url, additional_headers=self.headers)
            return await service._websocket_connect(
                worker_url,
                additional_headers=self.headers,
                open_timeout=timeout_secs,
                ping_interval=PING_INTERVAL_SECS,
                ping_timeout=PING_TIMEOUT_SECS,
            )

        return await self.connect(open_socket)

    async def unreachable(self, service: WebsocketService, what: str, error: Exception) -> None:
        """Tell the pipeline that ``service`` cannot reach ``what`` (e.g. "the worker"); permanent when a
        fallback exists, so pipecat's ServiceSwitcher moves on to it."""
        await service.push_error(
            error_msg=f"cannot reach {what} at {self.where}: {error}",
            exception=error,
            force_treat_as_permanent=self._has_fallback,
        )

    def failover(self, service: str, lost: str | None) -> WorkerFailoverFrame:
        """The frame that tells the report and the metrics that ``service`` moved from ``lost`` to ``url``."""
        return WorkerFailoverFrame(service=service, from_url=lost, to_url=self.url, reason="connection lost")


def unspoken_rest(text: str, heard_ms: float) -> str:
    """The words of ``text`` not heard yet after ``heard_ms`` of its audio, at a typical speaking rate; a
    word cut in the middle is said again (better twice than lost)."""
    chars = int(heard_ms / 1000 * CHARS_PER_SEC)
    if chars <= 0:
        return text
    if chars >= len(text):
        return ""
    cut = text.rfind(" ", 0, chars + 1)
    return text[cut + 1 :].strip() if cut >= 0 else text


def connection_settings(config: WorkerTTSConfig) -> dict[str, Any]:
    """Where the worker is (``url``, or ``registry`` and ``selector``), ``api_key`` and ``max_audio_ms`` of a
    worker kind's bot-file settings, as keyword arguments."""
    return {
        "url": config.url,
        "registry": config.registry,
        "selector": Selector(family=config.kind, voice=getattr(config, "voice", None)),
        "api_key": config.api_key.get_secret_value() if config.api_key else None,
        "max_audio_ms": config.max_audio_ms,
        "has_fallback": config.fallback is not None,
    }


@dataclass
class _ContextRequests:
    """Requests of one pipecat audio context and whether its turn has been flushed."""

    pending: set[str] = field(default_factory=set)
    flushed: bool = False


class WorkerTTSService(WebsocketTTSService):
    """Streams speech from a vivavoce model worker into the pipeline's audio contexts."""

    Settings = TTSSettings
    _settings: Settings

    def __init__(
        self,
        *,
        url: str | None = None,
        registry: str | None = None,
        selector: Selector | None = None,
        api_key: str | None = None,
        max_audio_ms: int | None = None,
        has_fallback: bool = False,
        **kwargs: Any,
    ):
        """``url``: the worker's ``ws://host:port/v1/stream``, or ``registry`` (``redis://...``) and the
        ``selector`` its workers must match; ``api_key``: None reads the env var; ``has_fallback``: a
        fallback takes over when no worker answers (the service then reports itself unusable)."""
        kwargs.setdefault("stop_frame_timeout_s", QUIET_SECS)
        self._endpoint = WorkerEndpoint(
            url=url, registry=registry, selector=selector, api_key=api_key, has_fallback=has_fallback
        )
        super().__init__(push_start_frame=True, **(ROUTED_RECONNECT if registry else {}), **kwargs)
        self._failing_over = False
        self._max_audio_ms = max_audio_ms
        self._receive_task = None
        self._seq = itertools.count(1)
        self._request_context: dict[str, str] = {}
        self._texts: dict[str, str] = {}
        self._contexts: dict[str, _ContextRequests] = {}
        self._playing: str | None = None  # the request whose `start` came last: binary frames are its
        self._heard_ms: dict[str, float] = {}  # request -> audio received for it
        # Not VHQ, which releases audio in bursts (measured on the phone input: bench/README.md, twilio_load.py).
        self._resampler = create_stream_resampler(quality="HQ")
        self._worker_rate = 24000

    def can_generate_metrics(self) -> bool:
        """TTFB and usage metrics are reported."""
        return True

    @property
    def worker_url(self) -> str | None:
        """The worker this service speaks through (None before a routed service's first connect)."""
        return self._endpoint.url

    # --- subclass hooks -----------------------------------------------------------------------

    def request_fields(self, text: str, request_id: str) -> dict[str, Any]:
        """Family-specific fields of a ``synthesize`` message (voice, context...)."""
        return {}

    async def on_request_done(self, request_id: str, text: str, message: dict[str, Any]) -> None:
        """A request finished (``done`` without ``cancelled``)."""

    def on_request_audio(self, request_id: str, pcm: bytes, sample_rate: int) -> None:
        """Audio of ``request_id`` as the worker sent it (before the resample to the pipeline's rate)."""

    async def on_worker_changed(self) -> None:
        """The session moved to another worker: what the last one cached (e.g. CSM's audio of earlier
        requests) is gone."""

    # --- connection ---------------------------------------------------------------------------

    async def start(self, frame: StartFrame):
        """Connect when the pipeline starts."""
        await super().start(frame)
        await self._connect()

    async def _connect(self):
        await super()._connect()
        await self._connect_websocket()
        if self._websocket and not self._receive_task:
            self._receive_task = self.create_task(self._receive_task_handler(self._report_error))

    async def _disconnect(self):
        await super()._disconnect()
        if self._receive_task:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        await self._disconnect_websocket()

    async def _connect_websocket(self):
        try:
            if self._websocket and self._websocket.state is State.OPEN:
                return
            self._websocket = await self._open()
            await self._call_event_handler("on_connected")
        except Exception as e:
            self._websocket = None
            await self._endpoint.unreachable(self, "the worker", e)
            await self._call_event_handler("on_connection_error", f"{e}")

    async def _open(self) -> Any:
        """A socket to the worker: the ``url``, or a worker picked from the registry."""
        return await self._endpoint.open(self)

    async def _disconnect_websocket(self):
        try:
            await self.stop_all_metrics()
            if self._websocket:
                await self._websocket.close()
        except Exception as e:
            logger.debug(f"{self}: closing the worker socket: {e}")
        finally:
            self._websocket = None
            self._playing = None
            if not self._failing_over:  # a failover carries the requests over to the next worker
                self._forget_requests()
            await self._call_event_handler("on_disconnected")

    def _drop(self, request_id: str) -> None:
        context_id = self._request_context.pop(request_id, None)
        self._texts.pop(request_id, None)
        if context_id is not None and context_id in self._contexts:
            self._contexts[context_id].pending.discard(request_id)

    def _forget_requests(self) -> None:
        self._request_context.clear()
        self._contexts.clear()
        self._heard_ms.clear()
        self._texts.clear()

    # --- requests -----------------------------------------------------------------------------

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Send one sentence; its audio arrives on the receive task. While the worker is being replaced the
        sentence waits: the failover sends it with the rest of the reply."""
        message = self._record(text, context_id)
        if not self._reconnect_in_progress:
            if not self._websocket or self._websocket.state is not State.OPEN:
                await self._connect()
            if not self._websocket:
                # No worker answered (the error is pushed) and no reconnect is under way to send it later:
                # the sentence is dropped now, not after QUIET_SECS of silence.
                logger.warning(f"{self}: no worker for {message['id']}; the sentence is not spoken")
                self._drop(message["id"])
                await self._maybe_close(context_id)
                yield None
                return
            try:
                await self._websocket.send(json.dumps(message))
            except Exception as e:  # a dying socket: the receive task notices, and the failover sends it again
                logger.warning(f"{self}: sending {message['id']} failed ({e}); it waits for the failover")
        await self.start_tts_usage_metrics(text)
        await self.start_ttfb_metrics()
        yield None

    def _record(self, text: str, context_id: str) -> dict[str, Any]:
        """Register a request for ``text`` in its context (pending until its ``done``); its message."""
        request_id = f"{context_id}/{next(self._seq)}"
        message = {"type": "synthesize", "id": request_id, "text": text, **self.request_fields(text, request_id)}
        if self._max_audio_ms:
            message["max_audio_ms"] = self._max_audio_ms
        self._request_context[request_id] = context_id
        self._texts[request_id] = text
        self._contexts.setdefault(context_id, _ContextRequests()).pending.add(request_id)
        return message

    async def _reconnect_websocket(self, attempt_number: int) -> bool:
        """pipecat's reconnect (to another worker, with a registry), then the failover: what the lost
        worker had not said yet (the rest of the sentence it was speaking, the sentences queued behind it or
        waiting for the new worker) is asked of the new one, in the same audio contexts. A failed attempt
        keeps all of it for the next."""
        contexts = {context_id: requests.flushed for context_id, requests in self._contexts.items()}
        unfinished = [
            (context_id, unspoken_rest(self._texts.get(request_id, ""), self._heard_ms.get(request_id, 0.0)))
            for request_id, context_id in self._request_context.items()
        ]
        worker, lost = self._endpoint.worker_key, self._endpoint.url
        self._failing_over = True
        try:
            reconnected = await super()._reconnect_websocket(attempt_number)
        finally:
            self._failing_over = False
        if not reconnected or not self._websocket:
            return reconnected
        if worker is not None and self._endpoint.worker_key != worker:
            await self.on_worker_changed()
        self._forget_requests()  # the lost worker's; what it had not said is asked again below
        for context_id, flushed in contexts.items():
            self._contexts[context_id] = _ContextRequests(flushed=flushed)
        carried = [(c, text) for c, text in unfinished if text and c in self._contexts]
        for context_id, text in carried:
            await self._websocket.send(json.dumps(self._record(text, context_id)))
        if carried:
            logger.warning(f"{self}: failed over to {self.worker_url}: {len(carried)} unfinished sentence(s) again")
        # Nothing is lost: what the worker had not said is asked of the new one (CSM's context goes inline).
        await self.push_frame(self._endpoint.failover("tts", lost))
        for context_id in list(contexts):
            await self._maybe_close(context_id)
        return reconnected

    async def _close_connection_contexts(self):
        """pipecat ends every audio context when a connection is replaced (a provider cannot resume one on a
        new connection) and the rest of the reply is lost; our workers can, so a failover keeps them."""
        if not self._failing_over:
            await super()._close_connection_contexts()

    async def flush_audio(self, context_id: str | None = None):
        """The turn has no more text: close its context once its requests are done."""
        context_id = context_id or self.get_active_audio_context_id()
        requests = self._contexts.get(context_id) if context_id else None
        if requests is None:
            return
        requests.flushed = True
        await self._maybe_close(context_id)

    async def on_audio_context_interrupted(self, context_id: str):
        """Barge-in: cancel the context's queued and running requests on the worker."""
        await self.stop_all_metrics()
        requests = self._contexts.pop(context_id, None)
        if requests and self._websocket and self._websocket.state is State.OPEN:
            for request_id in sorted(requests.pending):
                await self._websocket.send(json.dumps({"type": "cancel", "id": request_id}))
        await super().on_audio_context_interrupted(context_id)

    async def _maybe_close(self, context_id: str) -> None:
        requests = self._contexts.get(context_id)
        if requests is None or requests.pending or not requests.flushed:
            return
        del self._contexts[context_id]
        await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
        await self.remove_audio_context(context_id)

    # --- receiving ----------------------------------------------------------------------------

    async def _receive_messages(self):
        async for message in self._websocket:
            if isinstance(message, bytes):
                await self._on_audio(message)
            else:
                await self._on_message(json.loads(message))

    async def _on_audio(self, pcm: bytes) -> None:
        if self._playing is None:
            return
        self._heard_ms[self._playing] = self._heard_ms.get(self._playing, 0.0) + len(pcm) / 2 / self._worker_rate * 1000
        self.on_request_audio(self._playing, pcm, self._worker_rate)
        await self.stop_ttfb_metrics()
        if self._worker_rate != self.sample_rate:
            # The one resample between the worker's rate and the pipeline's output rate.
            pcm = await self._resampler.resample(pcm, self._worker_rate, self.sample_rate)
        await self._append_audio(self._playing, pcm)

    async def _append_audio(self, request_id: str, pcm: bytes) -> None:
        context_id = self._request_context.get(request_id)
        if not pcm or context_id is None or not self.audio_context_available(context_id):
            return  # audio of a cancelled request still in flight
        frame = TTSAudioRawFrame(audio=pcm, sample_rate=self.sample_rate, num_channels=1, context_id=context_id)
        frame.metadata["worker"] = self.worker_url  # which worker spoke it (a failover changes it mid-reply)
        await self.append_to_audio_context(context_id, frame)

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind, request_id = message.get("type"), message.get("id")
        if kind == "start":
            self._playing = request_id
            self._worker_rate = int(message.get("sample_rate", self._worker_rate))
            return
        if kind == "error" and message.get("code") == "unknown_id":
            return  # a cancel that crossed the request's `done`
        if kind == "error":
            await self.push_error(error_msg=f"worker error {message.get('code')}: {message.get('message')}")
        elif kind != "done":
            logger.warning(f"{self}: unexpected worker message {message}")
            return
        if request_id == self._playing:
            if kind == "done" and not message.get("cancelled") and self._worker_rate != self.sample_rate:
                await self._append_audio(request_id, await self._resampler.flush())
            await self._resampler.reset()
            self._playing = None
        context_id = self._request_context.pop(request_id, None)
        text = self._texts.pop(request_id, "")
        self._heard_ms.pop(request_id, None)
        if context_id is None:
            return
        if kind == "done" and not message.get("cancelled"):
            await self.on_request_done(request_id, text, message)
        requests = self._contexts.get(context_id)
        if requests is not None:
            requests.pending.discard(request_id)
            await self._maybe_close(context_id)
