"""A Twilio Media Streams client that stands in for Twilio: test a phone bot without a phone.

It speaks Twilio's documented messages exactly (``connected``, ``start`` with streamSid, callSid and
customParameters, base64 mu-law ``media`` of 160 bytes every 20 ms, ``dtmf``, ``stop``), plays a
recording as the caller, and plays the bot's audio out in real time like a phone: it honours ``clear``
(dropping unplayed audio) and echoes each ``mark`` once the audio before it has been played.
"""

from __future__ import annotations

import asyncio
import audioop
import base64
import json
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
FRAME_SECS = 0.02


def call_sid() -> str:
    """A fresh, well-formed CallSid."""
    return "CA" + uuid.uuid4().hex


def pcm16_to_mulaw_frames(pcm: np.ndarray) -> list[bytes]:
    """8 kHz int16 PCM as 20 ms mu-law frames (the last one padded with silence)."""
    mulaw = audioop.lin2ulaw(pcm.astype(np.int16).tobytes(), 2)
    mulaw += b"\xff" * (-len(mulaw) % FRAME_BYTES)  # 0xff is mu-law silence
    return [mulaw[i : i + FRAME_BYTES] for i in range(0, len(mulaw), FRAME_BYTES)]


@dataclass
class ReceivedAudio:
    """The bot's audio as the caller got it, with arrival times (``time.monotonic()``)."""

    frames: list[tuple[float, bytes]] = field(default_factory=list)

    def pcm(self) -> np.ndarray:
        """Everything received, decoded to 8 kHz int16."""
        data = b"".join(frame for _, frame in self.frames)
        return np.frombuffer(audioop.ulaw2lin(data, 2), dtype=np.int16) if data else np.zeros(0, np.int16)

    def gaps_ms(self) -> list[float]:
        """Time between consecutive media messages (within and between utterances)."""
        times = [t for t, _ in self.frames]
        return [(b - a) * 1000 for a, b in zip(times, times[1:], strict=False)]


class MediaStreamsCaller:
    """One simulated call against ``ws_url`` (e.g. ``ws://127.0.0.1:8765/twilio/ws``)."""

    def __init__(
        self,
        ws_url: str,
        *,
        token: str | None,
        call: str | None = None,
        account_sid: str | None = None,
        before_start: Sequence[str | bytes] = (),
    ):
        """Prepare a call; ``token`` is the stream parameter the webhook's TwiML carried.

        ``before_start``: raw messages sent between ``connected`` and ``start`` (handshake tests).
        """
        self.ws_url = ws_url
        self.call_sid = call or call_sid()
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.account_sid = account_sid or "AC" + "0" * 32
        self.token = token
        self.before_start = list(before_start)
        self.received = ReceivedAudio()
        self.events: list[tuple[float, dict[str, Any]]] = []  # every non-media message from the bot
        self.close_code: int | None = None
        self.close_reason: str = ""
        # Playout is a clock, not a task sleeping per frame: audio received plays until ``_played_until``,
        # and each mark is echoed by a timer at the time the audio before it has played.
        self._played_until = 0.0
        self._marks: deque[tuple[str, asyncio.TimerHandle]] = deque()
        self._echoes: set[asyncio.Task] = set()  # mark echoes being sent (asyncio keeps only weak references)
        self._sequence = 0
        self._media_clock = 0.0
        self._socket: Any = None

    def _message(self, event: str, **body: Any) -> str:
        self._sequence += 1
        return json.dumps({"event": event, "sequenceNumber": str(self._sequence), "streamSid": self.stream_sid, **body})

    async def __aenter__(self) -> MediaStreamsCaller:
        """Connect and send ``connected`` and ``start``."""
        self._socket = await websockets.connect(self.ws_url, max_size=2**20)
        await self._socket.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        for message in self.before_start:
            await self._socket.send(message)
        start = {
            "accountSid": self.account_sid,
            "streamSid": self.stream_sid,
            "callSid": self.call_sid,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"token": self.token} if self.token is not None else {},
        }
        await self._socket.send(self._message("start", start=start))
        self._receiver = asyncio.create_task(self._receive())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        """Send ``stop`` and hang up."""
        try:
            await self._socket.send(
                self._message("stop", stop={"accountSid": self.account_sid, "callSid": self.call_sid})
            )
        except websockets.ConnectionClosed:
            pass
        await self._socket.close()
        for _, timer in self._marks:
            timer.cancel()
        self._receiver.cancel()
        await asyncio.gather(self._receiver, return_exceptions=True)

    async def send_raw(self, data: str | bytes) -> None:
        """Send anything, e.g. a malformed message."""
        await self._socket.send(data)

    async def send_dtmf(self, digit: str) -> None:
        """Press a key."""
        await self._socket.send(self._message("dtmf", dtmf={"track": "inbound_track", "digit": digit}))

    async def speak(self, pcm_8k: np.ndarray) -> float:
        """Send 8 kHz speech as 20 ms media messages, paced in real time; returns when it started.

        Consecutive calls continue one media clock, as a phone line does: no gap, no burst.
        """
        frames = pcm16_to_mulaw_frames(pcm_8k)
        started = max(time.monotonic(), self._media_clock)
        self._media_clock = started + len(frames) * FRAME_SECS
        for index, frame in enumerate(frames):
            delay = started + index * FRAME_SECS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            media = {
                "track": "inbound",
                "chunk": str(index + 1),
                "timestamp": str(int(index * FRAME_SECS * 1000)),
                "payload": base64.b64encode(frame).decode(),
            }
            await self._socket.send(self._message("media", media=media))
        return started

    async def silence(self, seconds: float) -> None:
        """Keep the line open with silence, as a phone does."""
        await self.speak(np.zeros(int(seconds * 8000), dtype=np.int16))

    async def _receive(self) -> None:
        try:
            async for raw in self._socket:
                message = json.loads(raw)
                now = time.monotonic()
                event = message.get("event")
                if event == "media":
                    payload = base64.b64decode(message["media"]["payload"])
                    self.received.frames.append((now, payload))
                    self._played_until = max(now, self._played_until) + len(payload) / 8000
                    continue
                self.events.append((now, message))
                if event == "clear":
                    # Twilio drops the audio it has not played yet and echoes the pending marks at once.
                    self._played_until = now
                    while self._marks:
                        name, timer = self._marks.popleft()
                        timer.cancel()
                        self._echo_mark(name)
                elif event == "mark":
                    name = message["mark"]["name"]
                    delay = max(0.0, self._played_until - now)
                    self._marks.append((name, asyncio.get_running_loop().call_later(delay, self._echo_first_mark)))
        except websockets.ConnectionClosed as closed:
            self.close_code, self.close_reason = closed.code, closed.reason or ""
        finally:
            if self._socket.close_code is not None and self.close_code is None:
                self.close_code, self.close_reason = self._socket.close_code, self._socket.close_reason or ""

    def _echo_first_mark(self) -> None:
        self._echo_mark(self._marks.popleft()[0])

    def _echo_mark(self, name: str) -> None:
        """Tell the bot its audio up to mark ``name`` has been played."""
        if self._socket.close_code is None:
            echo = asyncio.ensure_future(self._send_quietly(self._message("mark", mark={"name": name})))
            self._echoes.add(echo)
            echo.add_done_callback(self._echoes.discard)

    async def _send_quietly(self, message: str) -> None:
        try:
            await self._socket.send(message)
        except websockets.ConnectionClosed:
            pass

    def first_event(self, event: str, after: float = 0.0) -> float | None:
        """When the first ``event`` message arrived after ``after`` (monotonic), if any."""
        return next((t for t, m in self.events if m.get("event") == event and t >= after), None)

    async def wait_closed(self, timeout: float) -> None:
        """Wait until the server closes the stream."""
        await asyncio.wait_for(asyncio.shield(self._receiver), timeout)
