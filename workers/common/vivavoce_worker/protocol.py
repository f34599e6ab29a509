"""Messages of the streaming synthesis protocol (``WS /v1/stream``); see workers/PROTOCOL.md."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

PROTOCOL = "vivavoce-synth/1"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # context turns carry base64 audio
MAX_TEXT_CHARS = 4000
MAX_CONTEXT_TURNS = 64
MAX_PENDING_PER_SOCKET = 16
# Output rates a client may ask for (resampled once, in the worker), and fixed frame lengths.
SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
MIN_FRAME_MS, MAX_FRAME_MS = 10, 100

RequestId = Annotated[str, Field(min_length=1, max_length=128)]


class ContextTurn(BaseModel):
    """A previous turn of the conversation: text, and its audio or a reference to audio this session made."""

    model_config = ConfigDict(extra="forbid")

    speaker: int = Field(0, ge=0, le=63, description="Speaker id of the turn (CSM: 0 bot, 1 user by convention).")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    audio: str | None = Field(None, description="Base64 little-endian PCM16 mono audio of the turn.")
    sample_rate: int | None = Field(None, ge=8000, le=48000, description="Rate of `audio`.")
    request_id: RequestId | None = Field(
        None, description="Instead of `audio`: the id of a finished request of this session (its audio is reused)."
    )

    @model_validator(mode="after")
    def _audio_needs_rate(self) -> ContextTurn:
        if self.audio is not None and self.sample_rate is None:
            raise ValueError("a context turn with `audio` needs `sample_rate`")
        if self.audio is not None and self.request_id is not None:
            raise ValueError("give `audio` or `request_id`, not both")
        return self


class SynthesizeMessage(BaseModel):
    """``{"type": "synthesize", ...}``: speak ``text``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["synthesize"]
    id: RequestId
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    voice: str | None = Field(None, max_length=128)
    speaker: int | None = Field(None, ge=0, le=63)
    context: list[ContextTurn] = Field(default_factory=list, max_length=MAX_CONTEXT_TURNS)
    max_audio_ms: int | None = Field(None, ge=80, le=120_000)
    exaggeration: float | None = Field(None, ge=0, le=2)
    cfg_weight: float | None = Field(None, ge=0, le=2)
    temperature: float | None = Field(None, gt=0, le=2)
    sample_rate: int | None = Field(None, description="Output rate (one of SAMPLE_RATES); default: the model's.")
    frame_ms: int | None = Field(
        None, ge=MIN_FRAME_MS, le=MAX_FRAME_MS, description="Fixed frames of this length (the last zero-padded)."
    )

    @model_validator(mode="after")
    def _output_format(self) -> SynthesizeMessage:
        check_output_format(self.sample_rate, self.frame_ms)
        return self


def check_output_format(sample_rate: int | None, frame_ms: int | None) -> None:
    """ValueError unless ``sample_rate`` is offered and ``frame_ms`` is a whole number of samples at it."""
    if sample_rate is not None and sample_rate not in SAMPLE_RATES:
        raise ValueError(f"sample_rate {sample_rate} is not one of {', '.join(map(str, SAMPLE_RATES))}")
    if frame_ms is not None and sample_rate is not None and frame_ms * sample_rate % 1000:
        raise ValueError(f"{frame_ms} ms at {sample_rate} Hz is not a whole number of samples")


class CancelMessage(BaseModel):
    """``{"type": "cancel", "id": ...}``: stop a queued or running request."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["cancel"]
    id: RequestId


ClientMessage = Annotated[SynthesizeMessage | CancelMessage, Field(discriminator="type")]
_client_message = TypeAdapter(ClientMessage)


class ProtocolError(Exception):
    """A message or request the server refuses; becomes an ``error`` reply, the socket stays open.

    ``id_key``: the key the reply names the request by: ``id`` on ``/v1/stream``, ``request_id`` on
    ``/v1/tts`` (see :func:`error_message`).
    """

    def __init__(self, code: str, message: str, request_id: str | None = None, *, id_key: str = "id"):
        """``code``: machine-readable (see PROTOCOL.md); ``message``: for people."""
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.id_key = id_key

    def reply(self) -> dict[str, Any]:
        """The ``error`` message for this refusal."""
        return error_message(self.code, self.message, self.request_id, id_key=self.id_key)


def error_message(code: str, message: str, request_id: str | None = None, *, id_key: str = "id") -> dict[str, Any]:
    """An ``error`` server message, its request's id under ``id_key``.

    ``/v1/stream``'s ``id`` is always there (null when the refused message named no request: its requests
    always have an id); ``/v1/tts``'s optional ``request_id`` is there only when the client gave one.
    """
    if id_key == "id":
        return {"type": "error", "id": request_id, "code": code, "message": message}
    return {"type": "error", "code": code, "message": message, **({id_key: request_id} if request_id else {})}


def load_message(raw: str, *, id_key: str = "id") -> tuple[dict[str, Any], str | None]:
    """One text frame as a JSON object, and the request id it gives under ``id_key`` (None when it gives
    none); ``ProtocolError`` when it is too large, not JSON, or not an object."""
    if len(raw.encode()) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"message larger than {MAX_MESSAGE_BYTES} bytes", id_key=id_key)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ProtocolError("bad_json", f"not JSON: {e}", id_key=id_key) from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_message", "a message is a JSON object with a `type`", id_key=id_key)
    return data, data.get(id_key) if isinstance(data.get(id_key), str) else None


def parse_client_message(raw: str) -> SynthesizeMessage | CancelMessage:
    """Parse one text frame; ``ProtocolError`` says what is wrong with it."""
    data, request_id = load_message(raw)
    if data.get("type") not in ("synthesize", "cancel"):
        raise ProtocolError(
            "unknown_type", f"unknown message type {data.get('type')!r}: expected 'synthesize' or 'cancel'", request_id
        )
    try:
        return _client_message.validate_python(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or 'message'}: {err['msg']}" for err in e.errors()
        )
        raise ProtocolError("bad_message", problems, request_id) from None
