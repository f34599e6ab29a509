"""Running the Moshi worker (its own venv, a tiny random checkpoint) and talking /api/chat to it."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from websockets.asyncio.client import connect

from vivavoce.testing.processes import free_port, serving

REPO = Path(__file__).resolve().parents[1]
WORKER_DIR = REPO / "workers" / "moshi"
WORKER_PYTHON = WORKER_DIR / ".venv" / "bin" / "python"
RATE = 24000
FRAME = 1920
HANDSHAKE, AUDIO, TEXT, ERROR = 0, 1, 2, 5


def worker_env(**extra: str) -> dict[str, str]:
    """The worker's environment: no torch.compile (seconds per process on CPU), two threads."""
    return os.environ | {"NO_TORCH_COMPILE": "1", "OMP_NUM_THREADS": "2"} | extra


def make_tiny_checkpoint(out: Path) -> Path:
    """A tiny random Moshi checkpoint, written by the worker's own code in the worker's venv."""
    subprocess.run(
        [str(WORKER_PYTHON), "-m", "vivavoce_moshi.tiny", str(out)],
        check=True, cwd=WORKER_DIR, env=worker_env(), capture_output=True, timeout=300,
    )
    return out


@dataclass
class Worker:
    """A running worker: its base URLs and process."""

    port: int
    process: subprocess.Popen

    @property
    def chat_url(self) -> str:
        """``ws://.../api/chat``."""
        return f"ws://127.0.0.1:{self.port}/api/chat"

    def health(self, **kwargs) -> dict:
        """``GET /health``."""
        return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=5, **kwargs).json()


@contextmanager
def moshi_worker(model: Path, *args: str, api_key: str | None = None) -> Iterator[Worker]:
    """Start ``python -m vivavoce_moshi --model DIR`` (greedy, unless args say otherwise) and wait until it is up."""
    port = free_port()
    auth = [] if api_key else ["--no-auth"]
    env = worker_env(VIVAVOCE_WORKER_API_KEY=api_key) if api_key else worker_env()
    command = [str(WORKER_PYTHON), "-m", "vivavoce_moshi", "--model", str(model), "--port", str(port),
               "--device", "cpu", "--threads", "2", *auth, *args]
    with serving(command, health=lambda: bool(Worker(port, None).health()), env=env, cwd=WORKER_DIR,
                 ready_secs=120, stop_secs=10) as process:
        yield Worker(port, process)


def noise_audio(seconds: float, seed: int, level: float = 0.1) -> np.ndarray:
    """Noise bursts at 24 kHz, float32: different seeds give different conversations."""
    rng = np.random.default_rng(seed)
    pcm = rng.normal(0, level, int(seconds * RATE)).astype(np.float32)
    envelope = np.repeat(rng.uniform(0.2, 1.0, len(pcm) // FRAME + 1), FRAME)[: len(pcm)]
    return (pcm * envelope).astype(np.float32)


def pcm16(samples: np.ndarray) -> bytes:
    """Float samples as PCM16 LE."""
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


@dataclass
class ChatResult:
    """What the worker sent in one conversation."""

    frames: list[bytes] = field(default_factory=list)
    texts: list[tuple[int, str]] = field(default_factory=list)
    """(index of the audio frame it came with, text piece)."""
    errors: list[str] = field(default_factory=list)

    def pcm(self) -> np.ndarray:
        """All audio as int16."""
        return np.frombuffer(b"".join(self.frames), dtype="<i2")


async def chat_pcm(
    url: str, audio: np.ndarray, *, query: str = "codec=pcm16&gate=off", chunk_frames: int = 1,
    realtime: bool = False, headers: dict[str, str] | None = None, extra: list[bytes] = (),
) -> ChatResult:
    """One conversation over ``codec=pcm16``: send ``audio`` (after ``extra`` raw messages), collect the replies.

    Returns once one output frame per input frame after the first has come back.
    """
    expected = len(audio) // FRAME - 1
    result = ChatResult()
    async with connect(f"{url}?{query}", additional_headers=headers or {}, max_size=None) as ws:
        first = await asyncio.wait_for(ws.recv(), 30)
        assert first == bytes([HANDSHAKE]), first
        for message in extra:
            await ws.send(message)

        async def send() -> None:
            step = FRAME * chunk_frames
            for start in range(0, len(audio), step):
                await ws.send(bytes([AUDIO]) + pcm16(audio[start : start + step]))
                await asyncio.sleep(0.08 * chunk_frames if realtime else 0)

        sender = asyncio.create_task(send())
        async with asyncio.timeout(120):
            while len(result.frames) < expected:
                message = await ws.recv()
                kind, payload = message[0], message[1:]
                if kind == AUDIO:
                    result.frames.append(payload)
                elif kind == TEXT:
                    result.texts.append((len(result.frames) - 1, payload.decode()))
                elif kind == ERROR:
                    result.errors.append(payload.decode())
        await sender
    return result
