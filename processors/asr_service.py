"""``AsrServiceSTTService``: speech to text from a vivavoce ASR service (``WS /v1/asr``, workers/asr).

The caller's audio streams to the service as it arrives; the service's partial transcripts become
pipecat ``InterimTranscriptionFrame`` s (the adaptive end of turn reads them early) and its finals
``TranscriptionFrame`` s, with the service's word timings in ``result``. The service finds the end of
each utterance itself (Silero VAD and Smart Turn, as the agent does); when the agent's own VAD hears the
user stop, it asks for the final at once (``flush``) so the turn never waits on the service's
end-of-turn as well as its own.

The service is one ``url``, or is picked from the fleet's registry (``registry``, through a
:class:`~vivavoce.worker_directory.WorkerRoute`). The audio of the utterance in progress is kept until its
final arrives: when the service dies (its socket closes, or pings go unanswered), pipecat's reconnect
lands on another one and that audio is streamed to it again (with the ``flush`` too if one was waiting), so
the caller's words are transcribed, not lost.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from loguru import logger
from pipecat.frames.frames import (
    Frame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import WebsocketSTTService
from pipecat.utils.time import time_now_iso8601
from websockets.protocol import State

from vivavoce.processors.worker_client import ROUTED_RECONNECT, WorkerEndpoint
from vivavoce.worker_directory import Selector

if TYPE_CHECKING:
    from vivavoce.build_context import BuildContext
    from vivavoce.processors.catalog import AsrServiceConfig

FINAL_WAIT_SECS = 2.0
"""How long the turn may wait for a final after the VAD stops (pipecat's transcript timeout): the
service transcribes on request (``flush``), so this covers a loaded service, not its end of turn."""
LEAD_IN_SECS = 1.0
"""Audio kept from before speech began (by the agent's VAD or the service's): replayed after a failover,
it holds the onset of words neither had recognised as speech yet, and the VAD's lead-in."""
MAX_REPLAY_SECS = 30.0
"""The most audio of one utterance kept for a replay (a longer one loses its start, never its end)."""
REPLAY_CHUNK_SECS = 0.5


class AsrServiceSTTService(WebsocketSTTService):
    """Streams the caller's audio to an ASR service and pushes its partial and final transcripts."""

    Settings = STTSettings
    _settings: Settings

    def __init__(
        self,
        *,
        url: str | None = None,
        registry: str | None = None,
        api_key: str | None = None,
        language: str = "en",
        has_fallback: bool = False,
        **kwargs: Any,
    ):
        """``url``: the service's ``ws://host:8001/v1/asr``, or ``registry`` (``redis://...``): the least
        loaded ready ASR service in the fleet; ``api_key``: None reads the worker key variable;
        ``has_fallback``: a fallback takes over when no service answers (this one then reports itself
        unusable)."""
        selector = Selector(family="asr")
        self._endpoint = WorkerEndpoint(
            url=url, registry=registry, selector=selector, api_key=api_key, has_fallback=has_fallback
        )
        settings = kwargs.pop("settings", None) or self.Settings(model=None, language=language)
        routed = ROUTED_RECONNECT if registry else {}
        super().__init__(ttfs_p99_latency=FINAL_WAIT_SECS, settings=settings, **routed, **kwargs)
        self._language = language
        self._receive_task = None
        self._unconfirmed = bytearray()  # audio sent since the last final: replayed after a failover
        self._in_speech = False  # speech began (the agent's VAD or the service said so) and no final came
        self._awaiting_final = False  # a flush was sent and its final has not come

    def can_generate_metrics(self) -> bool:
        """TTFB metrics are reported (end of speech to final)."""
        return True

    @property
    def worker_url(self) -> str | None:
        """The ASR service in use (None before a routed service's first connect)."""
        return self._endpoint.url

    # --- connection ---------------------------------------------------------------------------

    async def start(self, frame: Frame) -> None:
        """Connect when the pipeline starts."""
        await super().start(frame)
        await self._connect()

    async def _connect(self) -> None:
        await self._connect_websocket()
        await super()._connect()
        if not self._receive_task:
            self._receive_task = self.create_task(self._receive_task_handler(self._report_error))

    async def _disconnect(self) -> None:
        await super()._disconnect()
        if self._receive_task:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        await self._disconnect_websocket()

    async def _connect_websocket(self) -> None:
        try:
            if self._websocket and self._websocket.state is State.OPEN:
                return
            self._websocket = await self._open()
            config = {"type": "config", "sample_rate": self.sample_rate, "language": self._language}
            await self._websocket.send(json.dumps({**config, "encoding": "pcm_s16le"}))
            await self._call_event_handler("on_connected")
        except Exception as e:
            self._websocket = None
            await self._endpoint.unreachable(self, "the ASR service", e)

    async def _open(self) -> Any:
        """A socket to the service: the ``url``, or one picked from the registry."""
        return await self._endpoint.open(self)

    async def _reconnect_websocket(self, attempt_number: int) -> bool:
        """pipecat's reconnect (to another service, with a registry), then the utterance in progress, which
        the lost service had not finished transcribing, is streamed to the new one (and flushed again)."""
        lost = self.worker_url
        reconnected = await super()._reconnect_websocket(attempt_number)
        if not reconnected or not self._websocket:
            return reconnected
        replay = bytes(self._unconfirmed)
        chunk = int(REPLAY_CHUNK_SECS * self.sample_rate) * 2
        for start in range(0, len(replay), chunk):
            await self._websocket.send(replay[start : start + chunk])
        if self._awaiting_final:
            await self._websocket.send(json.dumps({"type": "flush"}))
        logger.warning(
            f"{self}: failed over from {lost} to {self.worker_url}: {len(replay) / 2 / self.sample_rate:.1f} s of the "
            f"utterance in progress streamed again{' and flushed' if self._awaiting_final else ''}"
        )
        # Nothing is lost: the utterance in flight is heard again by the new service.
        await self.push_frame(self._endpoint.failover("stt", lost))
        return reconnected

    async def _disconnect_websocket(self) -> None:
        try:
            if self._websocket:
                await self._websocket.close()
        except Exception as e:
            logger.debug(f"{self}: closing the ASR socket: {e}")
        finally:
            self._websocket = None
            await self._call_event_handler("on_disconnected")

    # --- audio out, transcripts in ------------------------------------------------------------

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        """Send the audio (kept until its final, for a failover); transcripts arrive on the receive task."""
        self._keep(audio)
        if self._websocket and self._websocket.state is State.OPEN:
            try:
                await self._websocket.send(audio)
            except Exception as e:  # the receive task notices the dead socket and fails over
                logger.warning(f"{self}: sending audio failed: {e}")
        yield None

    def _keep(self, audio: bytes) -> None:
        self._unconfirmed += audio
        seconds = LEAD_IN_SECS if not (self._in_speech or self._awaiting_final) else MAX_REPLAY_SECS
        excess = len(self._unconfirmed) - int(seconds * self.sample_rate) * 2
        if excess > 0:
            del self._unconfirmed[: excess + excess % 2]

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Keep the utterance from the agent's VAD start, and ask for the final as soon as it hears the user
        stop."""
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._in_speech = True  # the agent's VAD may hear words before the service says so
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._awaiting_final = True
            if self._websocket and self._websocket.state is State.OPEN:
                await self.start_processing_metrics()
                try:
                    await self._websocket.send(json.dumps({"type": "flush"}))
                except Exception as e:  # sent again after the failover
                    logger.warning(f"{self}: sending flush failed: {e}")

    async def _receive_messages(self) -> None:
        async for raw in self._websocket:
            if isinstance(raw, bytes):
                continue
            try:
                message = json.loads(raw)
            except json.JSONDecodeError:
                logger.warning(f"{self}: not JSON from the ASR service: {raw[:80]!r}")
                continue
            await self._on_message(message)

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        text = str(message.get("text") or "")
        if kind == "speech_start":
            self._in_speech = True
        elif kind == "partial" and text.strip():
            await self.push_frame(InterimTranscriptionFrame(text, self._user_id, time_now_iso8601(), result=message))
        elif kind == "final":
            self._confirmed()
            await self.stop_processing_metrics()
            if text.strip():
                await self.push_frame(TranscriptionFrame(text, self._user_id, time_now_iso8601(), result=message))
        elif kind == "speech_end":
            pass  # the final follows: the audio is kept until it comes
        elif kind == "error":
            await self.push_error(error_msg=f"ASR service error {message.get('code')}: {message.get('message')}")
        else:
            logger.warning(f"{self}: unexpected ASR service message {message}")

    def _confirmed(self) -> None:
        """A final came: its audio is never replayed (a replay would transcribe its last words twice)."""
        self._in_speech = self._awaiting_final = False
        self._unconfirmed.clear()


def create(config: AsrServiceConfig, context: BuildContext) -> AsrServiceSTTService:
    """Factory for the ``asr`` kind."""
    return AsrServiceSTTService(
        url=config.url,
        registry=config.registry,
        api_key=config.api_key.get_secret_value() if config.api_key else None,
        language=config.language,
        has_fallback=config.fallback is not None,
    )
