"""Helpers for tests/test_twilio.py: a stand-in for Twilio's REST API, the app on a free port, fakes.

Kept out of the test module so that a bot file can name :class:`EchoBrain` by dotted path
(``twilio_support:EchoBrain``): pytest puts ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import uvicorn
import websockets
from fastapi import FastAPI
from pipecat.frames.frames import Frame, InputAudioRawFrame, LLMContextFrame, OutputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from twilio.request_validator import RequestValidator

from vivavoce.testing.media_streams import FRAME_BYTES, pcm16_to_mulaw_frames
from vivavoce.testing.processes import free_port

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "test-auth-token-0123456789"
PUBLIC_URL = "https://example.test"
WEBHOOK_URL = PUBLIC_URL + "/twilio/voice"
REPO = Path(__file__).resolve().parents[1]


# --- A stand-in for Twilio's REST API -------------------------------------------------------------


@dataclass
class ApiRequest:
    """One request the stand-in received."""

    method: str
    path: str
    form: dict[str, str]
    auth: tuple[str, str] | None


@dataclass
class TwilioApiStandIn:
    """An HTTP server on a free port answering like api.twilio.com's Calls endpoints; records requests.

    A plain threaded ``http.server``, so both the SDK's sync client (``vivavoce call``) and its async
    one (aiohttp, used by the call control and by pipecat's serializer) can reach it from any thread.
    """

    requests: list[ApiRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        standin = self
        self._arrived = threading.Condition()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest's output clean
                pass

            def do_POST(self) -> None:  # http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                form = {key: values[-1] for key, values in parse_qs(body, keep_blank_values=True).items()}
                auth = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    auth = (user, password)
                with standin._arrived:
                    standin.requests.append(ApiRequest("POST", self.path, form, auth))
                    standin._arrived.notify_all()
                match = re.search(r"/Calls/(CA\w+)\.json$", self.path)
                sid = match.group(1) if match else "CA" + "f" * 32
                payload = {
                    "sid": sid,
                    "account_sid": ACCOUNT_SID,
                    "to": form.get("To"),
                    "from": form.get("From"),
                    "status": form.get("Status", "queued"),
                }
                data = json.dumps(payload).encode()
                self.send_response(200 if match else 201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: a free port
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> TwilioApiStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def matching(self, predicate: Callable[[ApiRequest], bool]) -> list[ApiRequest]:
        with self._arrived:
            return [r for r in self.requests if predicate(r)]

    async def wait_for(self, predicate: Callable[[ApiRequest], bool], timeout: float) -> ApiRequest:
        """The first request matching ``predicate``, waiting up to ``timeout`` seconds for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = self.matching(predicate)
            if found:
                return found[0]
            if loop.time() > deadline:
                raise AssertionError(f"no matching request within {timeout}s; got {self.requests}")
            await asyncio.sleep(0.05)


# --- Bot files ------------------------------------------------------------------------------------


def twilio_environ(**extra: str) -> dict[str, str]:
    return {
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "VIVAVOCE_PUBLIC_URL": PUBLIC_URL,
        **extra,
    }


def embedded_bot_file(tmp_path: Path, *, api_base_url: str, transfer_to: str | None = None) -> Path:
    """bots/twilio.yaml with the REST API pointed at the stand-in (and another transfer number)."""
    text = (REPO / "bots" / "twilio.yaml").read_text()
    text = text.replace(
        "  transfer_to: ${TRANSFER_TO:-+15550100000}\n",
        f"  transfer_to: {json.dumps(transfer_to) if transfer_to else '${TRANSFER_TO:-+15550100000}'}\n"
        f"  api_base_url: {api_base_url}\n",
    )
    assert "api_base_url" in text, "bots/twilio.yaml changed: update embedded_bot_file()"
    path = tmp_path / "twilio-embedded.yaml"
    path.write_text(text)
    return path


def echo_bot_file(path: Path, transport: str) -> Path:
    """Write a bot without models to ``path`` (named after its stem): its 's2s' brain, :class:`EchoBrain`,
    echoes the caller's audio back (alive = answers). ``transport``: the transport section, its lines after
    the first indented by two spaces."""
    path.write_text(
        f"""
version: 1
name: {path.stem}
transport:
  {transport}
turn_taking:
  end_of_turn:
    model: silence
    silence_secs: 0.3
pipeline:
  - kind: twilio_support:EchoBrain
    role: s2s
"""
    )
    return path


def light_bot_file(tmp_path: Path, *, api_base_url: str) -> Path:
    """A Twilio bot without models: its 's2s' brain echoes the caller's audio back (alive = answers)."""
    transport = (
        "kind: twilio\n  account_sid: ${TWILIO_ACCOUNT_SID}\n  auth_token: ${TWILIO_AUTH_TOKEN}\n"
        f"  public_url: ${{VIVAVOCE_PUBLIC_URL}}\n  api_base_url: {api_base_url}"
    )
    return echo_bot_file(tmp_path / "twilio-light.yaml", transport)


class EchoBrain(FrameProcessor):
    """Says back what it hears: each input audio frame comes back as bot audio. Needs no model."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await self.push_frame(frame, direction)
            await self.push_frame(
                OutputAudioRawFrame(audio=frame.audio, sample_rate=frame.sample_rate, num_channels=frame.num_channels)
            )
        elif not isinstance(frame, LLMContextFrame):  # the user's turns end here: there is no LLM to answer
            await self.push_frame(frame, direction)


# --- The app on a free port -----------------------------------------------------------------------


@dataclass
class RunningApp:
    app: FastAPI
    port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/twilio/ws"

    @property
    def calls(self) -> Any:
        return self.app.state.calls


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[RunningApp]:
    """Run ``app`` with uvicorn on a free port in this event loop (as `vivavoce serve` configures it)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws_max_size=256 * 1024, lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started or task.done():
                break
            await asyncio.sleep(0.02)
        if not server.started:
            raise RuntimeError(f"uvicorn did not start: {task.exception() if task.done() else 'timeout'}")
        yield RunningApp(app, port)
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 15)
        except asyncio.TimeoutError:
            server.force_exit = True
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def sign(params: dict[str, str], url: str = WEBHOOK_URL, token: str = AUTH_TOKEN) -> str:
    """X-Twilio-Signature as Twilio computes it."""
    return RequestValidator(token).compute_signature(url, params)


def voice_params(call_sid: str) -> dict[str, str]:
    return {
        "CallSid": call_sid,
        "AccountSid": ACCOUNT_SID,
        "From": "+15551230000",
        "To": "+15559870000",
        "CallStatus": "ringing",
        "Direction": "inbound",
    }


def stream_token(twiml: str) -> str:
    match = re.search(r'<Parameter name="token" value="([^"]+)"\s*/>', twiml)
    assert match, twiml
    return match.group(1)


async def answer_call(running: RunningApp, call_sid: str) -> str:
    """Post the signed voice webhook as Twilio would; return the stream token its TwiML carries."""
    params = voice_params(call_sid)
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{running.http}/twilio/voice", data=params, headers={"X-Twilio-Signature": sign(params)}
        )
    assert response.status_code == 200, response.text
    return stream_token(response.text)


async def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> Any:
    """Poll ``predicate`` until truthy; fail with ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(step)


# --- A caller's line: real-time media, silence unless speech is queued ------------------------------


class Line:
    """Keeps a :class:`MediaStreamsCaller`'s line open as a phone does: a 20 ms media message every 20 ms,
    silence unless speech was queued with :meth:`say`. Speech can be queued at any time (barge-in).
    """

    def __init__(self, caller: Any):
        self.caller = caller
        self._queue: list[bytes] = []
        self._silence = b"\xff" * FRAME_BYTES
        self._sent = 0
        self._task: asyncio.Task | None = None
        self.closed = False

    async def __aenter__(self) -> Line:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._task
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        started = time.monotonic()
        index = 0
        while True:
            delay = started + index * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            frame = self._queue.pop(0) if self._queue else self._silence
            media = {"track": "inbound", "chunk": str(index + 1), "timestamp": str(index * 20),
                     "payload": base64.b64encode(frame).decode()}
            try:
                await self.caller.send_raw(self.caller._message("media", media=media))
            except websockets.ConnectionClosed:
                self.closed = True
                return
            self._sent += 1
            index += 1

    async def say(self, pcm_8k: Any) -> tuple[float, float]:
        """Queue 8 kHz speech; return (onset, end) in ``time.monotonic()`` once it has all been sent."""

        frames = pcm16_to_mulaw_frames(pcm_8k)
        first = self._sent + len(self._queue)
        self._queue.extend(frames)
        while self._sent <= first and not self.closed:
            await asyncio.sleep(0.005)
        onset = time.monotonic()
        while self._sent < first + len(frames) and not self.closed:
            await asyncio.sleep(0.005)
        return onset, time.monotonic()

    def media_after(self, t: float) -> int:
        """How many media messages the caller received after ``t``."""
        return sum(1 for at, _ in self.caller.received.frames if at > t)


async def hears_back(line: Line, since: float, timeout: float = 10.0, frames: int = 5) -> None:
    """The call is alive: ``frames`` media messages arrive after ``since``. Fails at once if it was closed."""
    caller = line.caller

    def ready() -> bool:
        if caller.close_code is not None or line.closed:
            raise AssertionError(f"the call was closed: {caller.close_code} {caller.close_reason!r}")
        return line.media_after(since) >= frames

    await wait_until(ready, timeout, f"media after {since:.2f}")


# --- create_app's Twilio app, with each call's pipeline observed ------------------------------------


def observed_app(bot: Any, observers: Callable[[Any], list[Any]]) -> FastAPI:
    """What create_app builds for a twilio bot, with ``TwilioCalls(observers=...)``."""
    from vivavoce.transports.twilio_server import TwilioCalls, TwilioServerSettings

    settings = TwilioServerSettings.from_bot(bot.spec.transport, public_url=None, skip_signature=False)
    calls = TwilioCalls(bot, settings, observers=observers)
    app = FastAPI()
    app.include_router(calls.router())
    app.state.calls = calls
    return app


class FrameLog:
    """Builds a pipecat observer per call recording (monotonic time, frame) for frames of ``types``."""

    def __init__(self, *types: type):
        self.types = types
        self.frames: list[tuple[float, Any]] = []
        self.records: list[Any] = []

    def __call__(self, record: Any) -> list[Any]:
        from pipecat.observers.base_observer import BaseObserver

        log = self
        self.records.append(record)
        seen: set[int] = set()

        class _Observer(BaseObserver):
            async def on_push_frame(self, data: Any) -> None:
                frame = data.frame
                if isinstance(frame, log.types) and frame.id not in seen:
                    seen.add(frame.id)
                    log.frames.append((time.monotonic(), frame))

        return [_Observer()]

    def of(self, kind: type) -> list[tuple[float, Any]]:
        return [(t, f) for t, f in self.frames if isinstance(f, kind)]
