"""Voice registration: reference clip -> conditionals kept per voice id (``/voices`` routes).

The clips are kept as WAV files in the voices directory, so registered voices come back after a
restart. Computing conditionals is model work: it runs with the model to itself.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import time
import wave
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, Depends, HTTPException
from loguru import logger
from pydantic import BaseModel, Field

from vivavoce_worker.auth import ApiKeyAuth
from vivavoce_worker.engine import GenerationQueue

VOICE_ID = r"^[A-Za-z0-9_-]{1,64}$"
MIN_CLIP_SECS = 1.0
MAX_CLIP_SECS = 30.0
MAX_VOICES = 256


class VoiceEngine(Protocol):
    """What the registry needs from an engine."""

    voices: dict[str, Any]
    voice_registry: Any

    def make_voice(self, wav_path: Path) -> Any:
        """Conditionals for the voice in ``wav_path`` (runs with the model to itself)."""


class VoiceBody(BaseModel):
    """``POST /voices``."""

    id: str = Field(pattern=VOICE_ID, description="Voice id to use in `synthesize` messages.")
    wav: str = Field(description="Base64 WAV file (PCM16, mono or stereo), 1-30 s of one speaker.")


def check_clip(data: bytes) -> float:
    """The clip's duration in seconds; ValueError says what is wrong with it."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            if w.getsampwidth() != 2:
                raise ValueError("the clip must be 16-bit PCM WAV")
            seconds = w.getnframes() / w.getframerate()
    except (wave.Error, EOFError) as e:
        raise ValueError(f"not a WAV file: {e}") from None
    if not MIN_CLIP_SECS <= seconds <= MAX_CLIP_SECS:
        raise ValueError(f"the clip is {seconds:.1f} s: give {MIN_CLIP_SECS:.0f}-{MAX_CLIP_SECS:.0f} s")
    return seconds


class VoiceRegistry:
    """Registered voices of one worker, persisted as WAV files in ``directory``."""

    def __init__(self, engine: VoiceEngine, queue: GenerationQueue, directory: Path):
        """Voices live in ``engine.voices``; their clips in ``directory``."""
        self.engine = engine
        self.queue = queue
        self.directory = directory
        self.info: dict[str, dict[str, Any]] = {}
        directory.mkdir(parents=True, exist_ok=True)

    def load_saved(self) -> None:
        """Register the clips already in the directory (at start-up, through ``GenerationQueue.run_sync``)."""
        for path in sorted(self.directory.glob("*.wav")):
            try:
                seconds = check_clip(path.read_bytes())
                self.engine.voices[path.stem] = self.engine.make_voice(path)
                self.info[path.stem] = {"id": path.stem, "seconds": round(seconds, 2), "created": path.stat().st_mtime}
            except Exception as e:  # one bad file must not stop the worker
                logger.error("skipping saved voice {}: {}", path.name, e)

    async def register(self, voice_id: str, data: bytes) -> dict[str, Any]:
        """Compute and keep ``voice_id``'s conditionals; ValueError for a bad clip."""
        seconds = check_clip(data)
        if voice_id not in self.info and len(self.info) >= MAX_VOICES:
            raise ValueError(f"at most {MAX_VOICES} voices: delete one first")
        path = self.directory / f"{voice_id}.wav"
        staging = path.with_suffix(".tmp.wav")
        staging.write_bytes(data)
        try:
            conditionals = await self.queue.call(lambda: self.engine.make_voice(staging))
        except Exception:
            staging.unlink(missing_ok=True)
            raise
        staging.replace(path)
        self.engine.voices[voice_id] = conditionals
        self.info[voice_id] = {"id": voice_id, "seconds": round(seconds, 2), "created": time.time()}
        return self.info[voice_id]

    def delete(self, voice_id: str) -> bool:
        """Forget ``voice_id``; False if it was not registered."""
        if voice_id not in self.info:
            return False
        del self.info[voice_id]
        self.engine.voices.pop(voice_id, None)
        (self.directory / f"{voice_id}.wav").unlink(missing_ok=True)
        return True


def voices_router(registry: VoiceRegistry, auth: ApiKeyAuth) -> APIRouter:
    """``POST /voices``, ``GET /voices``, ``DELETE /voices/{id}`` (API key required like every route)."""
    router = APIRouter(dependencies=[Depends(auth)])

    @router.post("/voices", status_code=201)
    async def register(body: VoiceBody) -> dict[str, Any]:
        try:
            data = base64.b64decode(body.wav, validate=True)
        except (binascii.Error, ValueError):
            raise HTTPException(400, detail="`wav` is not valid base64") from None
        try:
            return await registry.register(body.id, data)
        except ValueError as e:
            raise HTTPException(400, detail=str(e)) from None

    @router.get("/voices")
    async def list_voices() -> dict[str, Any]:
        return {"voices": sorted(registry.info.values(), key=lambda v: v["id"])}

    @router.delete("/voices/{voice_id}")
    async def delete(voice_id: str) -> dict[str, Any]:
        if not re.match(VOICE_ID, voice_id) or not registry.delete(voice_id):
            raise HTTPException(404, detail=f"no voice {voice_id!r}")
        return {"deleted": voice_id}

    return router


def voice_routers(engine: VoiceEngine, voices_dir: Path):
    """``routers_for`` for ``run_worker``: the saved voices load at start-up, then the ``/voices`` routes."""

    def build(queue: GenerationQueue, auth: ApiKeyAuth) -> list[APIRouter]:
        registry = VoiceRegistry(engine, queue, voices_dir)
        queue.run_sync(registry.load_saved)
        engine.voice_registry = registry  # /v1/tts's register_voice uses it too
        return [voices_router(registry, auth)]

    return build
