"""Messages, limits and error codes of the ASR protocol (``WS /v1/asr``); see workers/PROTOCOL.md."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vivavoce_worker.protocol import ProtocolError

PROTOCOL = "vivavoce-asr/1"
MODEL_RATE = 16000  # what Silero VAD, Smart Turn and Whisper hear; other rates are resampled to it
MIN_RATE = 8000
MAX_RATE = 48000
MAX_TEXT_BYTES = 16 * 1024  # a config message is ~100 bytes
MAX_AUDIO_FRAME_BYTES = 4 * 1024 * 1024  # > 20 s of 48 kHz float32: any sane frame fits
ENCODINGS: dict[str, tuple[str, int]] = {"pcm_s16le": ("<i2", 2), "pcm_f32le": ("<f4", 4)}
DEFAULT_ENCODING = "pcm_s16le"
DEFAULT_LANGUAGE = "en"

# RFC 6455 "try again later": the close code for a worker at --max-connections.
WS_TRY_AGAIN_LATER = 1013

ERROR_CODES = (
    "bad_json",
    "bad_message",
    "unknown_type",
    "too_large",
    "bad_config",
    "unsupported_encoding",
    "unsupported_language",
    "config_after_audio",
    "bad_audio",
    "too_many_connections",
    "draining",
    "engine_error",
)


class AsrError(ProtocolError):
    """Input the server refuses; becomes an ``error`` message and the session goes on (except at capacity)."""

    def __init__(self, code: str, message: str):
        """``code``: one of :data:`ERROR_CODES`; ``message``: for people."""
        assert code in ERROR_CODES, code
        # No request ids on this protocol: the reply is {"type": "error", "code", "message"}.
        super().__init__(code, message, id_key="request_id")


class ConfigMessage(BaseModel):
    """``{"type": "config", ...}``: how the audio that follows is encoded (all fields optional)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["config"]
    sample_rate: int = Field(MODEL_RATE, ge=MIN_RATE, le=MAX_RATE, description="Rate of the binary frames (Hz).")
    language: str = Field(DEFAULT_LANGUAGE, min_length=2, max_length=8, description="Spoken language (ISO 639-1).")
    encoding: str = Field(DEFAULT_ENCODING, description="pcm_s16le or pcm_f32le (little-endian mono).")


class FlushMessage(BaseModel):
    """``{"type": "flush"}``: end the current turn now (the end of a stream); its final follows."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["flush"]


ClientMessage = ConfigMessage | FlushMessage
_MESSAGES: dict[str, type[BaseModel]] = {"config": ConfigMessage, "flush": FlushMessage}


def parse_text(raw: str) -> ClientMessage:
    """Parse one text frame; :class:`AsrError` says what is wrong with it."""
    size = len(raw.encode())
    if size > MAX_TEXT_BYTES:
        raise AsrError("too_large", f"text message of {size} bytes: the limit is {MAX_TEXT_BYTES}")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise AsrError("bad_json", f"not JSON: {e}") from None
    if not isinstance(data, dict):
        raise AsrError("bad_message", "a message is a JSON object with a `type`")
    model = _MESSAGES.get(data.get("type"))  # type: ignore[arg-type]
    if model is None:
        raise AsrError("unknown_type", f"unknown message type {data.get('type')!r}: expected 'config' or 'flush'")
    if model is ConfigMessage and "encoding" in data and data["encoding"] not in ENCODINGS:
        raise AsrError("unsupported_encoding", f"encoding {data['encoding']!r} is not one of {', '.join(ENCODINGS)}")
    try:
        return model.model_validate(data)  # type: ignore[return-value]
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}" for err in e.errors())
        raise AsrError("bad_config" if model is ConfigMessage else "bad_message", problems) from None
