"""Starting real worker processes from their own virtualenvs for the tests, and talking to them."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vivavoce.testing.processes import free_port, serving

__all__ = [
    "API_KEY", "REPO", "csm_python", "eventually", "free_port", "piper_python", "recv_json", "start_asr",
    "start_piper", "tone_wav", "tts_synthesize", "worker_process",
]  # fmt: skip

REPO = Path(__file__).resolve().parents[1]
CSM_PYTHON = REPO / "workers" / "csm" / ".venv" / "bin" / "python"
PIPER_PYTHON = REPO / "workers" / "piper" / ".venv" / "bin" / "python"
ASR_PYTHON = REPO / "workers" / "asr" / ".venv" / "bin" / "python"
API_KEY = "test-worker-key"
CSM_TEST_MAX_AUDIO_MS = 60_000
"""The fixture CSM worker's cap per request: a minute (its default 20 s takes the tiny model a few seconds, and a
barge-in test could find the reply already made)."""


def csm_python() -> Path:
    """The CSM worker's interpreter; a clear failure (never a skip) when its env was not built."""
    if not CSM_PYTHON.exists():
        pytest.fail("the CSM worker environment is missing: run `make worker-csm` (make test does)")
    return CSM_PYTHON


def start_worker(
    args: list[str], *, log: Path, auth: bool = True, env: dict[str, str] | None = None, ready_secs: float = 240.0
):
    """``python args... --port N --device cpu`` in the CSM worker's environment: (``http://127.0.0.1:N``, a
    context manager running it, which yields the process)."""
    port = free_port()
    full_env = {**os.environ, **(env or {}), "VIVAVOCE_WORKER_API_KEY": API_KEY}
    command = [str(csm_python()), *args, "--port", str(port), "--device", "cpu"]
    if not auth:
        command.append("--no-auth")
    url = f"http://127.0.0.1:{port}"
    return url, serving(
        command, health=f"{url}/health", env=full_env, cwd=REPO, log=log, ready_secs=ready_secs, stop_secs=20
    )


@contextmanager
def worker_process(args: list[str], **options: Any) -> Iterator[str]:
    """Run :func:`start_worker`'s process until the block ends; yields its ``http://127.0.0.1:N``."""
    url, running = start_worker(args, **options)
    with running:
        yield url


def piper_python() -> Path:
    """The Piper worker's interpreter; a clear failure (never a skip) when its env was not built."""
    if not PIPER_PYTHON.exists():
        pytest.fail("the Piper worker environment is missing: run `make worker-piper` (make test does)")
    return PIPER_PYTHON


def start_piper(log: Path, *args: str, auth: bool = True, port: int | None = None):
    """``python -m vivavoce_piper ARGS --port N``: (``http://127.0.0.1:N``, a context manager running it)."""
    port = port or free_port()
    command = [str(piper_python()), "-m", "vivavoce_piper", "--host", "127.0.0.1", "--port", str(port), *args]
    if not auth:
        command.append("--no-auth")
    env = {**os.environ, "VIVAVOCE_WORKER_API_KEY": API_KEY}
    url = f"http://127.0.0.1:{port}"
    return url, serving(command, health=f"{url}/health", env=env, cwd=REPO, log=log, ready_secs=120, stop_secs=10)


def start_asr(log: Path, *args: str, auth: bool = True):
    """``python -m vivavoce_asr ARGS --port N``: (``http://127.0.0.1:N``, a context manager running it)."""
    if not ASR_PYTHON.exists():
        pytest.fail("the ASR worker environment is missing: run `make worker-asr` (make test does)")
    port = free_port()
    command = [str(ASR_PYTHON), "-m", "vivavoce_asr", "--host", "127.0.0.1", "--port", str(port), *args]
    if not auth:
        command.append("--no-auth")
    env = {**os.environ, "VIVAVOCE_WORKER_API_KEY": API_KEY}
    url = f"http://127.0.0.1:{port}"
    return url, serving(command, health=f"{url}/health", env=env, cwd=REPO, log=log, ready_secs=120, stop_secs=20)


# --- talking to a worker --------------------------------------------------------------------------------


async def recv_json(ws: Any) -> dict[str, Any]:
    """The next message on an open worker socket, which must be JSON text (not audio)."""
    message = await asyncio.wait_for(ws.recv(), 60)
    assert isinstance(message, str), "binary where a JSON message was expected"
    return json.loads(message)


async def tts_synthesize(ws: Any, text: str, **fields: Any) -> tuple[list[dict], list[np.ndarray], dict]:
    """One ``synthesize`` on an open ``/v1/tts`` socket: its ``audio_chunk`` headers, their float32 audio,
    and the message that closed it (``synthesis_complete`` or an ``error``)."""
    await ws.send(json.dumps({"type": "synthesize", "text": text, **fields}))
    headers, chunks = [], []
    while True:
        message = await recv_json(ws)
        if message["type"] != "audio_chunk":
            return headers, chunks, message
        audio = await asyncio.wait_for(ws.recv(), 60)
        assert isinstance(audio, bytes), "an audio_chunk header must be followed by its audio"
        headers.append(message)
        chunks.append(np.frombuffer(audio, "<f4"))


def tone_wav(hz: float, seconds: float, rate: int = 16000) -> bytes:
    """A sine as a 16-bit mono WAV: a voice clip whose pitch the Chatterbox test engine takes."""
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.sin(2 * np.pi * hz * t) * 9000).astype("<i2").tobytes())
    return buf.getvalue()


async def eventually(read, check, secs: float = 10.0):
    """``await read()`` once ``check`` holds of it (the last read if it never does), polled every 0.1 s."""
    deadline = time.monotonic() + secs
    while not check(value := await read()) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return value
