"""Kyutai Moshi as the whole conversation (speech in, speech out): ``MoshiS2SService``.

It replaces STT + LLM + TTS. The user's audio streams to a Moshi worker (``workers/moshi``, its
``/api/chat`` protocol with ``codec=pcm16``), resampled once to the worker's 24 kHz; the bot's audio
comes back continuously and is resampled once to the pipeline's output rate. Moshi always sends
audio, silence included, so the service cuts it into utterances by level: an utterance starts at the
first audible frame (or text piece) and ends after ``utterance_end_ms`` of silence. Each is bracketed
like an LLM reply spoken by a TTS (``LLMFullResponseStartFrame``/``TTSStartedFrame`` ...
``TTSStoppedFrame``/``LLMFullResponseEndFrame``), its audio pushed as ``TTSAudioRawFrame`` and its
words as ``TTSTextFrame``, so the output transport marks the bot as speaking and the assistant
aggregator records what it said. Moshi does not transcribe the user: user transcripts come from an STT
placed before this service, if the bot file has one.

Barge-in: on ``InterruptionFrame`` the current utterance is dropped (the output transport drops what
it queued) and the bot's audio stays muted until the user stops speaking. The worker's turn gating
(``gate``, on by default) keeps the model itself silent while the user speaks; the protocol has no
message to cancel anything, since the model never stops listening.

The worker is one ``url``, or is picked from the fleet's registry (``registry``: the less loaded of two
ready ``moshi`` workers; a full or draining one refuses at the handshake and the next is tried). Failover:
when the socket closes or errors mid-call, or the worker owes audio for ``audio_deadline_secs`` (a hung
worker or host), the utterance in flight is ended (``TTSStoppedFrame``), the service connects to another
worker (with a fixed ``url``: the same one again) and the call goes on: the user's audio streams to the new
worker and the bot's audio resumes from it. What Moshi had heard and said lives in the lost worker's model
state and cannot be moved, so the new worker starts the conversation afresh: the call is *degraded*. A
:class:`~vivavoce.frames.WorkerFailoverFrame` (``degraded=True``) tells the report and the metrics; when no
worker answers, the service says why and ends the call.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import suppress
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np
from loguru import logger
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    EndWorkerFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.text.base_text_aggregator import TextType
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from vivavoce.frames import WorkerFailoverFrame
from vivavoce.processors.worker_client import WorkerEndpoint
from vivavoce.worker_directory import PING_INTERVAL_SECS, PING_TIMEOUT_SECS, Selector

if TYPE_CHECKING:
    from vivavoce.build_context import BuildContext
    from vivavoce.processors.catalog import MoshiConfig

MOSHI_SAMPLE_RATE = 24000
MOSHI_FRAME_SAMPLES = 1920
"""One 80 ms frame: the worker answers each full input frame with one output frame (after the first)."""
HANDSHAKE, AUDIO, TEXT, ERROR = 0x00, 0x01, 0x02, 0x05
FAMILY = "moshi"
"""The Moshi workers' family in the fleet's registry."""


class WorkerRefusedError(ConnectionError):
    """The worker answered the handshake with a refusal (full, draining, bad parameters)."""


def level_db(pcm: bytes) -> float:
    """Level of 16-bit PCM in dBFS (-120 for digital silence)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    rms = float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0
    return 20 * float(np.log10(max(rms / 32768.0, 1e-6)))


class MoshiS2SService(FrameProcessor):
    """Speech-to-speech through a Moshi worker; forwards every frame it does not consume."""

    def __init__(
        self,
        *,
        url: str | None = None,
        registry: str | None = None,
        api_key: str | None = None,
        gate: bool = True,
        gate_silence_ms: int = 480,
        gate_threshold_db: float = -40.0,
        speech_threshold_db: float = -50.0,
        utterance_end_ms: int = 400,
        connect_timeout_secs: float = 10.0,
        audio_deadline_secs: float = 2.0,
        **kwargs: Any,
    ):
        """``url``: the worker's ``ws://host:port/api/chat``, or ``registry`` (``redis://...``) to pick one of
        the fleet's ``moshi`` workers by load; ``api_key``: sent as ``X-API-Key`` (None: the worker key
        variable).

        ``gate``: the worker's turn gating (Moshi stays silent while the user speaks), which reopens after
        ``gate_silence_ms`` of the user below ``gate_threshold_db`` (dBFS). The bot's audio above
        ``speech_threshold_db`` is speech; ``utterance_end_ms`` of it below ends an utterance.
        ``connect_timeout_secs`` bounds the connection and handshake to a fixed ``url`` (the registry's route
        has its own, short one). ``audio_deadline_secs``: a worker that owes audio for the user's audio
        sent this long ago, and sent none since, is lost (failover). (The bot file's ``moshi`` kind
        validates these; see ``MoshiConfig``.)
        """
        super().__init__(**kwargs)
        if (url is None) == (registry is None):
            raise ValueError("a Moshi service needs a url or a registry, not both")
        # The worker in use (with a registry: set once one is picked); no fallback: Moshi's is the whole call.
        self._endpoint = WorkerEndpoint(
            url=url, registry=registry, selector=Selector(family=FAMILY), api_key=api_key, has_fallback=False
        )
        self._gate = gate
        self._gate_silence_ms = gate_silence_ms
        self._gate_threshold_db = gate_threshold_db
        self._speech_threshold_db = speech_threshold_db
        self._utterance_end_ms = utterance_end_ms
        self._connect_timeout_secs = connect_timeout_secs
        self._audio_deadline_secs = audio_deadline_secs
        self._ws: ClientConnection | None = None
        self._closing = False
        # What the worker owes: one output frame per full input frame after the first.
        self._sent_samples = 0
        self._received_frames = 0
        self._owed_since: float | None = None
        self._receive_task: asyncio.Task | None = None
        self._out_rate = MOSHI_SAMPLE_RATE
        self._in_resampler = create_stream_resampler(quality="QQ")
        self._out_resampler = create_stream_resampler(quality="QQ")
        self._context_id: str | None = None
        self._quiet_ms = 0.0
        self._muted = False

    def chat_url(self, url: str | None = None) -> str:
        """The worker URL (``url``, or the one in use) with this service's query parameters."""
        query = {"codec": "pcm16", "gate": "on" if self._gate else "off"}
        if self._gate:
            query |= {"gate_silence_ms": str(self._gate_silence_ms), "gate_threshold_db": str(self._gate_threshold_db)}
        parts = urlsplit(url or self._endpoint.url or "")
        extra = f"{parts.query}&" if parts.query else ""
        return urlunsplit(parts._replace(query=extra + urlencode(query)))

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Send the user's audio, react to turn and lifecycle frames, forward everything."""
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            self._out_rate = self.processor_setup.audio_out_sample_rate
            await self._connect()
            return
        if isinstance(frame, (EndFrame, CancelFrame)):
            await self._disconnect()
        elif isinstance(frame, InterruptionFrame):
            self._muted = True
            self._context_id = None
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._muted = False
        elif isinstance(frame, InputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._send_audio(frame)
        await self.push_frame(frame, direction)

    async def _open(self, url: str, timeout_secs: float | None) -> ClientConnection:
        """A conversation on the worker at ``url``: connected and past its handshake byte, within
        ``timeout_secs`` (None: ``connect_timeout_secs``).

        :class:`WorkerRefusedError` with the worker's reason when it refuses (a full or draining worker sends
        its reason, then closes with 1013); OSError, TimeoutError or WebSocketException when unreachable.
        """
        ws: ClientConnection | None = None
        try:
            async with asyncio.timeout(self._connect_timeout_secs if timeout_secs is None else timeout_secs):
                ws = await connect(
                    self.chat_url(url), additional_headers=self._endpoint.headers, max_size=None,
                    ping_interval=PING_INTERVAL_SECS, ping_timeout=PING_TIMEOUT_SECS,
                )
                try:
                    first = await ws.recv()
                except ConnectionClosed as e:
                    raise WorkerRefusedError(e.rcvd.reason if e.rcvd else str(e)) from None
            if not isinstance(first, bytes) or first[:1] != bytes([HANDSHAKE]):
                raise WorkerRefusedError(first[1:].decode(errors="replace") if isinstance(first, bytes) else first)
        except BaseException:
            if ws is not None:
                with suppress(Exception):
                    await asyncio.wait_for(ws.close(), 1.0)
            raise
        return ws

    async def _open_worker(self) -> ClientConnection:
        """A conversation on a worker: the ``url``, or one the registry's route picks (not one that just
        failed); the counts of what it owes start afresh."""
        ws = await self._endpoint.connect(self._open)
        self._sent_samples = self._received_frames = 0
        self._owed_since = None
        return ws

    async def _connect(self) -> None:
        try:
            self._ws = await self._open_worker()
        except WorkerRefusedError as e:
            await self._fail(f"Moshi worker refused the conversation: {e}")
            return
        except (OSError, TimeoutError, WebSocketException) as e:  # refused, no such path (HTTP 404), bad URL...
            await self._fail(f"Moshi worker at {self._endpoint.where} unreachable: {e}", e)
            return
        logger.info(f"{self}: connected to the Moshi worker at {self._endpoint.url}")
        self._receive_task = self.create_task(self._receive())

    async def _fail(self, message: str, exception: Exception | None = None) -> None:
        # Without its worker this service can do nothing: say why, then end the conversation.
        await self.push_error(message, exception=exception, force_treat_as_permanent=True)
        await self.push_frame(EndWorkerFrame(reason=message))

    async def _disconnect(self) -> None:
        self._closing = True
        if self._receive_task:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        if self._ws:
            await self._ws.close()
            self._ws = None
        await self._end_utterance()

    async def _send_audio(self, frame: InputAudioRawFrame) -> None:
        ws = self._ws
        if ws is None:
            return  # no worker (failing over): this audio is not heard by any
        pcm = await self._in_resampler.resample(frame.audio, frame.sample_rate, MOSHI_SAMPLE_RATE)
        if not pcm:
            return
        try:
            await ws.send(bytes([AUDIO]) + pcm)
        except ConnectionClosed:
            return  # the receive task sees the same close and fails over
        self._sent_samples += len(pcm) // 2
        if self._owed_since is None and self._owes_audio():
            self._owed_since = time.monotonic()

    def _owes_audio(self) -> bool:
        """Whether the worker has not answered every full input frame but its first (the acoustic delay)."""
        return self._sent_samples // MOSHI_FRAME_SAMPLES - 1 > self._received_frames

    async def _receive(self) -> None:
        # Runs for the whole call: each worker's conversation until it is lost, then the next worker's.
        while self._ws is not None:
            reason = await self._receive_from(self._ws)
            await self._end_utterance()  # the utterance in flight ends with the worker that spoke it
            if self._closing or not await self._failover(reason):
                return

    async def _receive_from(self, ws: ClientConnection) -> str:
        """Play what ``ws``'s worker sends until it is lost; returns how it was lost."""
        # Moshi answers input frames: when the user's audio stops (the end of a recording, a muted
        # client), so does Moshi's, and an open utterance must end by itself.
        quiet_secs = self._utterance_end_ms / 1000
        try:
            while True:
                waits = [quiet_secs] if self._context_id else []
                if self._owed_since is not None:
                    waits.append(max(0.0, self._owed_since + self._audio_deadline_secs - time.monotonic()))
                try:
                    message = await asyncio.wait_for(ws.recv(), min(waits) if waits else None)
                except TimeoutError:
                    owed = self._owed_since
                    if owed is not None and time.monotonic() - owed >= self._audio_deadline_secs:
                        return f"no audio from the worker for {self._audio_deadline_secs:g} s"
                    await self._end_utterance()
                    continue
                if not isinstance(message, bytes) or not message:
                    continue
                kind, payload = message[0], message[1:]
                if kind == AUDIO:
                    self._received_frames += 1
                    self._owed_since = time.monotonic() if self._owes_audio() else None
                    await self._on_audio(payload)
                elif kind == TEXT:
                    await self._on_text(payload.decode(errors="replace"))
                elif kind == ERROR:
                    await self.push_error(f"Moshi worker: {payload.decode(errors='replace')}")
        except ConnectionClosed as e:
            return f"the socket closed ({e})"

    async def _failover(self, reason: str) -> bool:
        """Move the call to another worker (degraded: Moshi's state is lost with the old one); False, after
        ending the call with the reason, when none answers."""
        lost, ws = self._endpoint.url, self._ws
        self._ws = None
        if ws is not None:
            with suppress(Exception):  # a hung worker must not hold the failover up
                await asyncio.wait_for(ws.close(), 0.5)
        logger.warning(f"{self}: lost the Moshi worker at {lost} ({reason}); connecting to another")
        try:
            self._ws = await self._open_worker()
        except (OSError, TimeoutError, WebSocketException) as e:
            await self.push_frame(WorkerFailoverFrame(service=FAMILY, from_url=lost, reason=reason, degraded=True))
            await self._fail(f"Moshi worker at {lost} lost ({reason}) and no other answered: {e}", e)
            return False
        logger.warning(f"{self}: failed over from {lost} to {self._endpoint.url}; the conversation so far is forgotten")
        await self.push_frame(
            WorkerFailoverFrame(service=FAMILY, from_url=lost, to_url=self._endpoint.url, reason=reason, degraded=True)
        )
        return True

    async def _on_audio(self, pcm24: bytes) -> None:
        if self._muted:
            return
        frame_ms = 1000 * len(pcm24) / 2 / MOSHI_SAMPLE_RATE
        audible = level_db(pcm24) > self._speech_threshold_db
        if audible:
            await self._start_utterance()
            self._quiet_ms = 0.0
        elif self._context_id is not None:
            self._quiet_ms += frame_ms
            if self._quiet_ms >= self._utterance_end_ms:
                await self._end_utterance()
        if self._context_id is None:
            return  # silence between utterances: the output transport plays its own
        pcm = await self._out_resampler.resample(pcm24, MOSHI_SAMPLE_RATE, self._out_rate)
        if pcm:
            await self.push_frame(TTSAudioRawFrame(pcm, self._out_rate, 1, context_id=self._context_id))

    async def _on_text(self, piece: str) -> None:
        if self._muted or not piece:
            return
        await self._start_utterance()
        frame = TTSTextFrame(piece, text_type=TextType.TOKEN, context_id=self._context_id)
        frame.includes_inter_frame_spaces = True  # Moshi's pieces carry their own leading spaces
        await self.push_frame(frame)

    async def _start_utterance(self) -> None:
        if self._context_id is not None:
            return
        self._context_id = str(uuid.uuid4())
        self._quiet_ms = 0.0
        await self.push_frame(LLMFullResponseStartFrame())
        await self.push_frame(TTSStartedFrame(context_id=self._context_id))

    async def _end_utterance(self) -> None:
        if self._context_id is None:
            return
        context_id, self._context_id = self._context_id, None
        await self.push_frame(TTSStoppedFrame(context_id=context_id))
        await self.push_frame(LLMFullResponseEndFrame())


def create(config: MoshiConfig, context: BuildContext) -> MoshiS2SService:
    """Factory for the ``moshi`` kind."""
    return MoshiS2SService(
        url=config.url,
        registry=config.registry,
        api_key=config.api_key.get_secret_value() if config.api_key else None,
        gate=config.gate,
        gate_silence_ms=config.gate_silence_ms,
        gate_threshold_db=config.gate_threshold_db,
        speech_threshold_db=config.speech_threshold_db,
        utterance_end_ms=config.utterance_end_ms,
    )
