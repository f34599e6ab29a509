"""Twilio Media Streams on top of pipecat's ``TwilioFrameSerializer``: hardened input, and playout marks.

pipecat's serializer turns media into audio frames, DTMF into ``InputDTMFFrame``, and sends ``clear`` on
``InterruptionFrame``. One caller's malformed message must never end the call (an exception in
``deserialize`` stops pipecat's receive loop), so every message is checked here first. Twilio's ``mark``
messages, which pipecat does not use, tell when the caller has actually heard the bot's audio.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from loguru import logger
from pipecat.audio.resamplers.base_audio_resampler import BaseAudioResampler
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import Frame, InputTransportMessageFrame, OutputTransportMessageFrame, TTSStoppedFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.serializers.twilio import TwilioFrameSerializer

MAX_MESSAGE_BYTES = 64 * 1024
"""Largest message accepted (a 20 ms media message is ~250 bytes; one second is ~11 KB)."""
MAX_MEDIA_PAYLOAD_BYTES = 8000
"""Largest decoded media payload accepted: one second of 8 kHz mu-law."""
KNOWN_EVENTS = {"connected", "start", "media", "dtmf", "mark", "stop"}


def parse_message(data: str | bytes) -> Any | None:
    """A message's JSON, or None if it is not JSON (including JSON nested too deep to parse)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


def caller_audio_resampler(clear_after_secs: float | None) -> BaseAudioResampler:
    """The stream resampler that brings a caller's 8 kHz audio to the pipeline's rate.

    soxr's default (VHQ) stream resampler releases 8 kHz input in bursts, which holds caller audio back from the
    VAD (a later barge-in: measured by bench/twilio_load.py, figures in bench/README.md); QQ emits steadily, and a
    phone line has nothing above 4 kHz for the better filter to keep.
    """
    return create_stream_resampler(quality="QQ", clear_after_secs=clear_after_secs)


class TwilioStreamSerializer(TwilioFrameSerializer):
    """pipecat's Twilio serializer, validating every message and reporting ``mark`` echoes.

    Rejected messages are logged (once per kind, then counted in ``rejected``) and dropped: the call
    goes on. A ``mark`` echo becomes an ``InputTransportMessageFrame`` with ``{"mark": name, "at": t}``.
    ``keep_call``: asked when the stream ends; true keeps the call up (pipecat's serializer hangs it up), as
    when the host stops and another host is to go on with the call.
    """

    def __init__(self, *args: Any, keep_call: Callable[[], bool] | None = None, **kwargs: Any):
        """See :class:`TwilioFrameSerializer`."""
        super().__init__(*args, **kwargs)
        self._keep_call = keep_call
        self._input_resampler = caller_audio_resampler(self._params.resampler_clear_after_secs)
        self.rejected: Counter[str] = Counter()
        self.stopped = False

    def _reject(self, reason: str, data: str | bytes) -> None:
        self.rejected[reason] += 1
        if self.rejected[reason] == 1:
            logger.warning(f"Twilio stream {self._stream_sid}: dropped a message ({reason}): {str(data)[:120]!r}")

    async def deserialize(self, data: str | bytes) -> Frame | None:
        """Check the message, then let pipecat convert it."""
        if len(data) > MAX_MESSAGE_BYTES:
            self._reject("oversized message", data[:120])
            return None
        message = parse_message(data)
        if message is None:
            self._reject("invalid JSON", data)
            return None
        if not isinstance(message, dict):
            self._reject("not a JSON object", data)
            return None
        event = message.get("event")
        if not isinstance(event, str) or event not in KNOWN_EVENTS:
            self._reject(f"unknown event {event!r}", data)
            return None
        if event == "media":
            return await self._media(message, data)
        if event == "dtmf":
            digit = (message.get("dtmf") or {}).get("digit") if isinstance(message.get("dtmf"), dict) else None
            if not isinstance(digit, str):
                self._reject("dtmf without a digit", data)
                return None
            return await super().deserialize(data)
        if event == "mark":
            name = (message.get("mark") or {}).get("name") if isinstance(message.get("mark"), dict) else None
            if not isinstance(name, str):
                self._reject("mark without a name", data)
                return None
            return InputTransportMessageFrame(message={"mark": name, "at": time.monotonic()})
        if event == "start":
            self._reject("a second start on a started stream", data)
            return None
        if event == "stop":
            self.stopped = True
        return None

    async def _hang_up_call(self) -> None:
        """pipecat's hang-up at the stream's end, unless the call is to go on elsewhere."""
        if self._keep_call is not None and self._keep_call():
            logger.info(f"Call {self._call_sid}: not hung up: it goes on on another host")
            return
        await super()._hang_up_call()

    async def _media(self, message: dict, data: str | bytes) -> Frame | None:
        media = message.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        if not isinstance(payload, str) or not payload:
            self._reject("media without a payload", data)
            return None
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self._reject("media payload is not base64", data)
            return None
        if len(audio) > MAX_MEDIA_PAYLOAD_BYTES:
            self._reject("oversized media payload", data[:120])
            return None
        return await super().deserialize(data)


class PlayoutMarks(FrameProcessor):
    """Sends a Twilio ``mark`` after each bot utterance's audio; Twilio echoes it once the caller heard it.

    Sits just before the output transport, so the mark leaves after the utterance's last audio frame.
    The echo comes back through :class:`TwilioStreamSerializer` as an ``InputTransportMessageFrame``.
    """

    def __init__(self, stream_sid: str, **kwargs: Any):
        """Marks for the stream ``stream_sid``."""
        # It only forwards: it runs in the pushing processor's task (pipecat's direct mode) rather than
        # paying a queue and a task switch per 20 ms frame of its own.
        super().__init__(enable_direct_mode=True, **kwargs)
        self._stream_sid = stream_sid
        self._count = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Forward everything; follow each TTSStoppedFrame with a mark."""
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, TTSStoppedFrame) and direction == FrameDirection.DOWNSTREAM:
            self._count += 1
            mark = {"event": "mark", "streamSid": self._stream_sid, "mark": {"name": f"utterance-{self._count}"}}
            # Not urgent: it queues behind the utterance's audio in the output transport.
            await self.push_frame(OutputTransportMessageFrame(message=mark))
