"""``AsrServiceSTTService``: speech to text from a vivavoce ASR service (``WS /v1/asr``, workers/asr).

The caller's audio streams to the service as it arrives; the service's partial transcripts become
pipecat ``InterimTranscriptionFrame`` s (the adaptive end of turn reads them early) and its finals
``TranscriptionFrame`` s, with the service's word timings in ``result``. The service finds the end of
each utterance itself (Silero VAD and Smart Turn, as the agent does); when the agent's own VAD hears the
user stop, it asks for the final at once (``flush``) so the turn never waits on the service's
end-of-turn as well as its own. Reconnects are pipecat's (``WebsocketService``).
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
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import WebsocketSTTService
from pipecat.utils.time import time_now_iso8601
from websockets.protocol import State

from vivavoce.processors.worker_client import worker_api_key

if TYPE_CHECKING:
    from vivavoce.build_context import BuildContext
    from vivavoce.processors.catalog import AsrServiceConfig

FINAL_WAIT_SECS = 2.0
"""How long the turn may wait for a final after the VAD stops (pipecat's transcript timeout): the
service transcribes on request (``flush``), so this covers a loaded service, not its end of turn."""


class AsrServiceSTTService(WebsocketSTTService):
    """Streams the caller's audio to an ASR service and pushes its partial and final transcripts."""

    Settings = STTSettings
    _settings: Settings

    def __init__(self, *, url: str, api_key: str | None = None, language: str = "en", **kwargs: Any):
        """``url``: the service's ``ws://host:8001/v1/asr``; ``api_key``: None reads the worker key variable."""
        settings = kwargs.pop("settings", None) or self.Settings(model=None, language=language)
        super().__init__(ttfs_p99_latency=FINAL_WAIT_SECS, settings=settings, **kwargs)
        self._url = url
        self._api_key = worker_api_key(api_key)
        self._language = language
        self._receive_task = None

    def can_generate_metrics(self) -> bool:
        """TTFB metrics are reported (end of speech to final)."""
        return True

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
            headers = {"X-API-Key": self._api_key} if self._api_key else {}
            self._websocket = await self._websocket_connect(self._url, additional_headers=headers)
            config = {"type": "config", "sample_rate": self.sample_rate, "language": self._language}
            await self._websocket.send(json.dumps({**config, "encoding": "pcm_s16le"}))
            await self._call_event_handler("on_connected")
        except Exception as e:
            self._websocket = None
            await self.push_error(error_msg=f"cannot reach the ASR service at {self._url}: {e}", exception=e)

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
        """Send the audio; transcripts arrive on the receive task."""
        if self._websocket and self._websocket.state is State.OPEN:
            try:
                await self._websocket.send(audio)
            except Exception as e:
                logger.warning(f"{self}: sending audio failed: {e}")
        yield None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Ask for the final as soon as the agent's VAD hears the user stop."""
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStoppedSpeakingFrame) and self._websocket and self._websocket.state is State.OPEN:
            await self.start_processing_metrics()
            await self._websocket.send(json.dumps({"type": "flush"}))

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
        if kind == "partial" and text.strip():
            await self.push_frame(InterimTranscriptionFrame(text, self._user_id, time_now_iso8601(), result=message))
        elif kind == "final":
            await self.stop_processing_metrics()
            if text.strip():
                await self.push_frame(TranscriptionFrame(text, self._user_id, time_now_iso8601(), result=message))
        elif kind == "error":
            await self.push_error(error_msg=f"ASR service error {message.get('code')}: {message.get('message')}")
        elif kind not in ("speech_start", "speech_end"):
            logger.warning(f"{self}: unexpected ASR service message {message}")


def create(config: AsrServiceConfig, context: BuildContext) -> AsrServiceSTTService:
    """Factory for the ``asr`` kind."""
    return AsrServiceSTTService(
        url=config.url,
        api_key=config.api_key.get_secret_value() if config.api_key else None,
        language=config.language,
    )
