"""A WebRTC client (aiortc) that talks to a `vivavoce serve` WebRTC bot as a browser would.

It sends a microphone track (silence, or speech queued with :meth:`WebRTCPeer.say`, paced in real time),
opens the data channel and says RTVI ``client-ready``, records the bot's audio (16 kHz mono) with the
arrival time of every frame, and keeps every data-channel message. Test a WebRTC bot without a browser.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import soxr
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, AudioResampler

WIRE_RATE = 48000
FRAME_SAMPLES = WIRE_RATE // 50  # 20 ms, as browsers send
RECORD_RATE = 16000


class ScriptedMicrophone(MediaStreamTrack):
    """An audio track that plays queued speech in real time and silence in between."""

    kind = "audio"

    def __init__(self) -> None:
        """Start silent."""
        super().__init__()
        self._queue: deque[np.ndarray] = deque()
        self._pts = 0
        self._start: float | None = None
        self.speaking_until = 0.0

    def say(self, pcm: np.ndarray, sample_rate: int) -> float:
        """Queue mono int16 speech; returns when (``time.monotonic()``) it will have been sent."""
        wire = soxr.resample(pcm.astype(np.float32) / 32768, sample_rate, WIRE_RATE)
        wire = (np.clip(wire, -1, 1) * 32767).astype(np.int16)
        wire = np.pad(wire, (0, -len(wire) % FRAME_SAMPLES))
        queued = sum(len(f) for f in self._queue) / WIRE_RATE
        self._queue.extend(wire.reshape(-1, FRAME_SAMPLES))
        self.speaking_until = time.monotonic() + queued + len(wire) / WIRE_RATE
        return self.speaking_until

    async def recv(self) -> AudioFrame:
        """The next 20 ms frame, at its real-time moment."""
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pts / WIRE_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        samples = self._queue.popleft() if self._queue else np.zeros(FRAME_SAMPLES, dtype=np.int16)
        frame = AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = WIRE_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, WIRE_RATE)
        self._pts += FRAME_SAMPLES
        return frame


@dataclass
class ReceivedAudio:
    """The bot's audio as received: 16 kHz mono chunks with their arrival times (``time.monotonic()``)."""

    chunks: list[tuple[float, np.ndarray]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # every decoded frame, for gap statistics

    def between(self, start: float, end: float = float("inf")) -> np.ndarray:
        """The audio that arrived in [start, end)."""
        parts = [pcm for at, pcm in self.chunks if start <= at < end]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    def gaps_ms(self, since: float = 0.0) -> list[float]:
        """Time between consecutive received frames (one frame's duration, 20 ms, when on time)."""
        times = [t for t in self.arrivals if t >= since]
        return [(b - a) * 1000 for a, b in zip(times, times[1:], strict=False)]


class WebRTCPeer:
    """One client session: ``async with WebRTCPeer(base_url) as peer: ...``."""

    def __init__(self, base_url: str, *, client: httpx.AsyncClient | None = None):
        """Talk to the server at ``base_url`` (``http://host:port``)."""
        self.base_url = base_url.rstrip("/")
        self.microphone = ScriptedMicrophone()
        self.received = ReceivedAudio()
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self.pc_id: str | None = None
        self.offer_sent: float | None = None
        self.connected_at: float | None = None
        self._client = client
        self._pc = RTCPeerConnection()
        self._connected = asyncio.Event()
        self._reader: asyncio.Task | None = None
        self._channel: Any = None

    async def __aenter__(self) -> WebRTCPeer:
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def connect(self, timeout: float = 20.0) -> None:
        """Offer, answer, and wait until the peer connection is connected."""
        pc = self._pc
        pc.addTrack(self.microphone)  # first transceiver: pipecat reads the microphone from it
        self._channel = pc.createDataChannel("chat", ordered=True)

        @self._channel.on("open")
        def _open() -> None:
            self.send_rtvi("client-ready", {"version": "2.2.0", "about": {"library": "vivavoce-webrtc-peer"}})

        @self._channel.on("message")
        def _message(raw: Any) -> None:
            try:
                self.messages.append((time.monotonic(), json.loads(raw)))
            except (TypeError, ValueError):
                return

        @pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self._reader = asyncio.create_task(self._read(track))

        @pc.on("connectionstatechange")
        def _state() -> None:
            if pc.connectionState == "connected":
                self.connected_at = time.monotonic()
                self._connected.set()

        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers its candidates here
        self.offer_sent = time.monotonic()
        answer = await self.post("/api/offer", {"sdp": pc.localDescription.sdp, "type": "offer"})
        if answer.status_code != 200:
            await self.close()
            raise RuntimeError(f"offer refused: {answer.status_code} {answer.text}")
        body = answer.json()
        self.pc_id = body["pc_id"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        await asyncio.wait_for(self._connected.wait(), timeout)

    @property
    def setup_secs(self) -> float | None:
        """Offer sent -> peer connection connected."""
        if self.offer_sent is None or self.connected_at is None:
            return None
        return self.connected_at - self.offer_sent

    async def post(self, path: str, body: Any, method: str = "POST") -> httpx.Response:
        """A JSON request to the server."""
        if self._client is not None:
            return await self._client.request(method, self.base_url + path, json=body, timeout=30)
        async with httpx.AsyncClient() as client:
            return await client.request(method, self.base_url + path, json=body, timeout=30)

    def send_rtvi(self, type_: str, data: Any = None) -> None:
        """Send an RTVI message on the data channel."""
        message = {"label": "rtvi-ai", "type": type_, "id": f"{type_}-{len(self.messages)}", "data": data}
        self._channel.send(json.dumps(message))

    def say(self, pcm: np.ndarray, sample_rate: int) -> float:
        """Speak into the microphone; returns when the speech will have been sent."""
        return self.microphone.say(pcm, sample_rate)

    def rtvi(self, type_: str, since: float = 0.0) -> list[dict[str, Any]]:
        """The RTVI messages of a type received since ``since``; their ``data``."""
        return [m.get("data") or {} for at, m in self.messages if at >= since and m.get("type") == type_]

    def server_messages(self, kind: str, since: float = 0.0) -> list[dict[str, Any]]:
        """Our own RTVI server messages (e.g. ``turn-latency``) received since ``since``."""
        return [d for d in self.rtvi("server-message", since) if d.get("type") == kind]

    async def _read(self, track: MediaStreamTrack) -> None:
        resampler = AudioResampler(format="s16", layout="mono", rate=RECORD_RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            at = time.monotonic()
            self.received.arrivals.append(at)
            for out in resampler.resample(frame):
                self.received.chunks.append((at, out.to_ndarray().reshape(-1).astype(np.int16)))

    async def close(self) -> None:
        """Hang up."""
        await self._pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
