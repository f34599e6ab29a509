"""``WS /v1/tts``: the TTS service messages, beside the worker protocol (see workers/PROTOCOL.md).

A client that knows nothing of vivavoce sends ``synthesize`` (text, voice id, streaming, chunk size,
emotion) and gets float32 little-endian mono audio in binary frames, each announced by an
``audio_chunk`` message, then ``synthesis_complete``; workers that clone voices also take
``register_voice``. Requests of one socket run one at a time, in order, through the same queue (and
loudness normalisation) as ``/v1/stream``; errors are JSON messages with a code and never close the
socket.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from fastapi import WebSocket
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vivavoce_worker.engine import (
    GenerationQueue,
    GenerationStats,
    NotSupported,
    ServiceOptions,
    SynthesisRequest,
    UnknownVoice,
)
from vivavoce_worker.framing import Reframer, samples_for_ms
from vivavoce_worker.protocol import (
    MAX_FRAME_MS,
    MAX_PENDING_PER_SOCKET,
    MAX_TEXT_CHARS,
    MIN_FRAME_MS,
    ProtocolError,
    check_output_format,
    load_message,
)
from vivavoce_worker.socket_loop import RequestSocket

DEFAULT_SAMPLE_RATE = 24000
MESSAGE_TYPES = ("synthesize", "register_voice", "cancel")
RequestId = Field(None, min_length=1, max_length=128, description="Echoed in every reply about this request.")


class TtsSynthesize(BaseModel):
    """``{"type": "synthesize", "text", "voice_id", "streaming", "chunk_size", "emotion", ...}``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["synthesize"]
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    voice_id: str | None = Field(None, min_length=1, max_length=128)
    streaming: bool = True
    chunk_size: int | None = Field(None, ge=1, le=60_000, description="Per engine: see PROTOCOL.md.")
    emotion: str | float | None = Field(None, description="Per engine: see PROTOCOL.md.")
    sample_rate: int = DEFAULT_SAMPLE_RATE
    frame_ms: int | None = Field(None, ge=MIN_FRAME_MS, le=MAX_FRAME_MS)
    request_id: str | None = RequestId

    @model_validator(mode="after")
    def _output_format(self) -> TtsSynthesize:
        check_output_format(self.sample_rate, self.frame_ms)
        if isinstance(self.emotion, str) and len(self.emotion) > 32:
            raise ValueError("`emotion` is a short name or a number")
        return self


class TtsRegisterVoice(BaseModel):
    """``{"type": "register_voice", "voice_id", "reference_audio": "<base64 WAV>"}``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["register_voice"]
    voice_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    reference_audio: str = Field(min_length=1)
    request_id: str | None = RequestId


class TtsCancel(BaseModel):
    """``{"type": "cancel"}``: stop the running synthesis and drop the queued ones (or only ``request_id``)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["cancel"]
    request_id: str | None = RequestId


TtsMessage = TtsSynthesize | TtsRegisterVoice | TtsCancel
_MODELS: dict[str, type[BaseModel]] = {
    "synthesize": TtsSynthesize,
    "register_voice": TtsRegisterVoice,
    "cancel": TtsCancel,
}


ID_KEY = "request_id"
"""The key ``/v1/tts`` replies name a request by."""


def _refusal(code: str, message: str, request_id: str | None = None) -> ProtocolError:
    """A ``/v1/tts`` refusal: ``{"type": "error", "code", "message"[, "request_id"]}``, the socket stays open."""
    return ProtocolError(code, message, request_id, id_key=ID_KEY)


def parse_tts_message(raw: str) -> TtsMessage:
    """Parse one text frame; a ``ProtocolError`` says what is wrong with it."""
    data, request_id = load_message(raw, id_key=ID_KEY)
    kind = data.get("type")
    if kind not in _MODELS:
        raise _refusal("unknown_type", f"unknown message type {kind!r}: expected one of {MESSAGE_TYPES}", request_id)
    text = data.get("text")
    if kind == "synthesize" and isinstance(text, str) and len(text) > MAX_TEXT_CHARS:
        raise _refusal("text_too_long", f"text is {len(text)} characters: at most {MAX_TEXT_CHARS}", request_id)
    try:
        return _MODELS[kind].model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}" for err in e.errors())
        raise _refusal("bad_message", problems, request_id) from None


@dataclass
class _Job:
    """A queued ``synthesize`` (with its engine options) or ``register_voice``."""

    message: TtsSynthesize | TtsRegisterVoice
    service: ServiceOptions | None = None
    request: SynthesisRequest | None = None
    cancelled: bool = False
    sent: int = field(default=0)


class _TtsSocket(RequestSocket):
    """One ``/v1/tts`` connection: jobs run one at a time, in order; audio is announced chunk by chunk."""

    route = "/v1/tts"
    id_key = ID_KEY
    _ids = itertools.count(1)

    def __init__(self, ws: WebSocket, queue: GenerationQueue):
        super().__init__(ws)
        self.queue = queue
        self.engine = queue.engine
        self.session = queue.engine.new_session()  # no conversation context on /v1/tts, but engines expect one
        self.jobs: list[_Job] = []  # queued and running, oldest first
        self._todo: asyncio.Queue[_Job] = asyncio.Queue()

    async def handle(self, text: str) -> None:
        await self._handle(parse_tts_message(text))

    def cancel_all(self) -> None:
        for job in self.jobs:
            job.cancelled = True
            if job.request is not None:
                job.request.cancelled.set()

    async def _handle(self, msg: TtsMessage) -> None:
        if isinstance(msg, TtsCancel):
            await self._cancel(msg.request_id)
            return
        if len(self.jobs) > MAX_PENDING_PER_SOCKET:
            raise _refusal("busy", f"more than {MAX_PENDING_PER_SOCKET} requests queued on this socket", msg.request_id)
        job = _Job(msg)
        if isinstance(msg, TtsRegisterVoice):
            if self.engine.voice_registry is None:
                raise _refusal("not_supported", f"{self.engine.name} does not clone voices", msg.request_id)
        else:
            try:
                job.service = self.engine.service_options(msg.chunk_size, msg.emotion)
            except NotSupported as e:
                raise _refusal("not_supported", str(e), msg.request_id) from None
            except ValueError as e:
                raise _refusal("bad_message", str(e), msg.request_id) from None
        self.jobs.append(job)
        self._todo.put_nowait(job)

    async def _cancel(self, request_id: str | None) -> None:
        targets = [j for j in self.jobs if request_id is None or j.message.request_id == request_id]
        if request_id is not None and not targets:
            raise _refusal("unknown_id", f"no queued or running request {request_id!r}", request_id)
        for job in targets:
            job.cancelled = True
            if job.request is not None:
                job.request.cancelled.set()  # running: its synthesis_complete follows once generation stops

    async def work(self) -> None:
        while True:
            job = await self._todo.get()
            try:
                if isinstance(job.message, TtsRegisterVoice):
                    if not job.cancelled:
                        await self._register(job.message)
                elif job.cancelled:
                    await self._complete(job, GenerationStats(cancelled=True), 0.0)
                else:
                    await self._synthesize(job)
            except ProtocolError as e:
                await self.send_json(e.reply())
            finally:
                self.jobs.remove(job)

    async def _register(self, msg: TtsRegisterVoice) -> None:
        try:
            data = base64.b64decode(msg.reference_audio, validate=True)
        except (binascii.Error, ValueError):
            raise _refusal("bad_audio", "`reference_audio` is not valid base64", msg.request_id) from None
        try:
            info = await self.engine.voice_registry.register(msg.voice_id, data)
        except ValueError as e:
            raise _refusal("bad_audio", str(e), msg.request_id) from None
        except Exception as e:
            logger.exception("registering voice {} failed", msg.voice_id)
            raise _refusal("engine_error", f"{type(e).__name__}: {e}", msg.request_id) from None
        reply = {"type": "voice_registered", "voice_id": msg.voice_id, "seconds": info.get("seconds")}
        await self.send_json({**reply, **({"request_id": msg.request_id} if msg.request_id else {})})

    async def _send_chunk(self, job: _Job, samples: np.ndarray, rate: int) -> None:
        header = {"type": "audio_chunk", "chunk_id": job.sent, "duration_ms": round(1000 * len(samples) / rate, 3)}
        if job.message.request_id:
            header["request_id"] = job.message.request_id
        # Header and audio travel together: an error reply never splits them.
        await self.send_json_and_bytes(header, samples.astype("<f4").tobytes())
        job.sent += 1

    async def _synthesize(self, job: _Job) -> None:
        msg: TtsSynthesize = job.message  # type: ignore[assignment]
        if msg.voice_id is not None and not self.engine.known_voice(msg.voice_id):
            names = self.engine.voice_names()
            listed = f"; it has {', '.join(names)}" if names else ""
            raise _refusal(
                "unknown_voice", f"no voice {msg.voice_id!r} on this {self.engine.name} worker{listed}", msg.request_id
            )
        rate = msg.sample_rate
        if msg.frame_ms:
            chunk: int | None = samples_for_ms(msg.frame_ms, rate)
        elif job.service and job.service.chunk_ms:
            chunk = max(1, round(job.service.chunk_ms * rate / 1000))
        else:
            chunk = None
        request = SynthesisRequest(
            id=msg.request_id or f"tts-{next(self._ids)}",
            text=msg.text,
            voice=msg.voice_id,
            options=dict(job.service.options) if job.service else {},
        )
        job.request = request
        reframer = Reframer(self.engine.sample_rate, rate, chunk, pad_last=msg.frame_ms is not None)
        stats = GenerationStats()
        held: list[np.ndarray] = []
        sent_samples = 0

        async def out(pieces: list[np.ndarray]) -> None:
            nonlocal sent_samples
            for piece in pieces:
                if request.cancelled.is_set():
                    return  # audio in flight when cancel came is dropped
                if msg.streaming:
                    await self._send_chunk(job, piece, rate)
                    sent_samples += len(piece)
                else:
                    held.append(piece)

        started = time.perf_counter()
        try:
            async for samples in self.queue.stream(request, self.session, stats):
                await out(reframer.push(samples))
            await out(reframer.flush())
        except UnknownVoice as e:
            raise _refusal("unknown_voice", str(e), msg.request_id) from None
        except NotSupported as e:
            raise _refusal("not_supported", str(e), msg.request_id) from None
        except ValueError as e:
            raise _refusal("bad_request", str(e), msg.request_id) from None
        except Exception as e:
            logger.exception("synthesis failed for {}", request.id)
            raise _refusal("engine_error", f"{type(e).__name__}: {e}", msg.request_id) from None
        if held and not request.cancelled.is_set():
            pieces = held if chunk is not None else [np.concatenate(held)]
            for piece in pieces:
                await self._send_chunk(job, piece, rate)
                sent_samples += len(piece)
        stats.cancelled = stats.cancelled or request.cancelled.is_set()
        await self._complete(job, stats, 1000 * sent_samples / rate, time.perf_counter() - started)

    async def _complete(self, job: _Job, stats: GenerationStats, duration_ms: float, wall_s: float = 0.0) -> None:
        msg = job.message
        reply: dict[str, Any] = {
            "type": "synthesis_complete",
            "total_duration_ms": round(duration_ms, 3),
            "chunks_sent": job.sent,
            "cancelled": stats.cancelled,
            "sample_rate": getattr(msg, "sample_rate", DEFAULT_SAMPLE_RATE),
            "first_chunk_ms": round(stats.first_chunk_ms, 1) if stats.first_chunk_ms is not None else None,
            "generation_ms": round(1000 * wall_s, 1),
        }
        if msg.request_id:
            reply["request_id"] = msg.request_id
        await self.send_json(reply)


async def serve_tts_socket(ws: WebSocket, queue: GenerationQueue) -> None:
    """Serve one accepted ``/v1/tts`` socket until the client leaves."""
    await _TtsSocket(ws, queue).run()
