"""The receive loop and send lock shared by the workers' sockets (``/v1/stream`` and its native route,
``/v1/tts``, and the ASR service's ``/v1/asr``); see workers/PROTOCOL.md.

Every protocol takes JSON text messages (the ASR service also audio frames), refuses a bad one with an
``error`` reply and keeps the socket open, runs the socket's work in a task of its own, and cancels what is
left when the client goes. They differ in their messages and in the key a reply names its request by
(``id`` or ``request_id``).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from fastapi import WebSocket
from loguru import logger
from starlette.websockets import WebSocketDisconnect

from vivavoce_worker.protocol import ProtocolError


class RequestSocket(ABC):
    """One accepted connection: messages are read here and handed to :meth:`handle`; every send goes
    through one lock, so a reply never lands between an announcement and the audio it announces."""

    route: ClassVar[str]
    """Names the protocol in log lines."""
    id_key: ClassVar[str] = "id"
    """The key this protocol's replies carry a request's id under."""

    def __init__(self, ws: WebSocket):
        self.ws = ws
        self._send_lock = asyncio.Lock()

    async def send_json(self, data: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.ws.send_json(data)

    async def send_bytes(self, data: bytes) -> None:
        async with self._send_lock:
            await self.ws.send_bytes(data)

    async def send_json_and_bytes(self, header: dict[str, Any], data: bytes) -> None:
        """A message and the binary frame it announces, with nothing between them."""
        async with self._send_lock:
            await self.ws.send_json(header)
            await self.ws.send_bytes(data)

    @abstractmethod
    async def handle(self, text: str) -> None:
        """Parse and act on one text message; raise :class:`ProtocolError` to refuse it."""

    async def handle_bytes(self, data: bytes) -> None:
        """Act on one binary frame (by default, refused: clients send text)."""
        raise ProtocolError("binary_not_expected", "clients send JSON text messages only", id_key=self.id_key)

    async def refuse(self, error: ProtocolError) -> None:
        """Answer a refused message (by default at once)."""
        await self.send_json(error.reply())

    async def closed(self) -> None:  # noqa: B027 (optional hook: most sockets have nothing left)
        """The client has gone and the work task has ended: release what is left."""

    @abstractmethod
    async def work(self) -> None:
        """Run the socket's requests one at a time, until cancelled."""

    @abstractmethod
    def cancel_all(self) -> None:
        """The client has gone: stop whatever is queued or running."""

    async def run(self) -> None:
        """Serve the socket until the client leaves."""
        worker = asyncio.create_task(self.work())
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                try:
                    if message.get("bytes") is not None:
                        await self.handle_bytes(message["bytes"])
                    else:
                        await self.handle(message.get("text") or "")
                except ProtocolError as e:
                    logger.info("{} error {}: {}", self.route, e.code, e.message)
                    await self.refuse(e)
        except WebSocketDisconnect:
            return
        finally:
            self.cancel_all()
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                pass
            await self.closed()
