"""A worker's entry in the fleet's registry (Redis), kept fresh while it serves.

Key layout (PROTOCOL.md, "Registry"): the hash ``vivavoce:worker:<family>:<boot_id>`` describes the worker
and expires ``ttl_ms`` after the last refresh; the sorted set ``vivavoce:workers:<family>`` lists the keys
scored by when they expire, so agents find the live workers without a ``KEYS`` scan. Each refresh writes
the whole entry, so a Redis that restarted empty has every worker back within one refresh.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from loguru import logger

KEY_PREFIX = "vivavoce"


class RegistryError(RuntimeError):
    """The registry cannot be reached at start; the message says where it was looked for."""


class Registration:
    """Registers one worker and refreshes its entry every ``refresh_secs`` until :meth:`stop`.

    ``stats()`` gives the live figures, ``{"active_sessions": n, "queue_depth": n}``, read at each refresh.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        family: str,
        url: str,
        max_sessions: int,
        stats: Callable[[], dict[str, int]],
        models: Sequence[str] = (),
        voices: Callable[[], Sequence[str]] | Sequence[str] = (),
        resident: Callable[[], Sequence[str]] | None = None,
        version: str = "",
        ttl_ms: int = 3000,
        refresh_secs: float = 1.0,
    ):
        """Describe the worker; nothing is written until :meth:`start`."""
        from redis.asyncio import Redis

        self.redis_url = redis_url
        self.family, self.url, self.max_sessions = family, url, max_sessions
        self.boot_id = uuid.uuid4().hex[:16]
        self.key = f"{KEY_PREFIX}:worker:{family}:{self.boot_id}"
        self.index = f"{KEY_PREFIX}:workers:{family}"
        self.state = "ready"
        self._stats, self._models, self._voices, self._version = stats, list(models), voices, version
        self._resident = resident
        self._ttl_ms, self._refresh_secs = ttl_ms, refresh_secs
        self._redis = Redis.from_url(redis_url, socket_connect_timeout=2.0, socket_timeout=2.0)
        self._task: asyncio.Task | None = None
        self._failing = False

    def fields(self) -> dict[str, Any]:
        """The hash as written now."""
        voices = self._voices() if callable(self._voices) else self._voices
        stats = self._stats()
        return {
            "family": self.family,
            "url": self.url,
            "boot_id": self.boot_id,
            "version": self._version,
            "state": self.state,
            "max_sessions": self.max_sessions,
            "active_sessions": int(stats.get("active_sessions", 0)),
            "queue_depth": int(stats.get("queue_depth", 0)),
            "models": json.dumps(self._models),
            "voices": json.dumps(list(voices)),
            # Loaded now (the rest of `voices` loads on demand): agents prefer a worker that has theirs.
            **({"resident": json.dumps(list(self._resident()))} if self._resident is not None else {}),
        }

    async def start(self) -> None:
        """Write the entry (raising :class:`RegistryError` if Redis does not answer), then keep it fresh."""
        from redis.exceptions import RedisError

        try:
            await self._write()
        except (RedisError, OSError) as e:
            raise RegistryError(f"the worker registry at {self.redis_url} does not answer: {e}") from None
        logger.info("registered as {} at {} ({})", self.key, self.redis_url, self.url)
        self._task = asyncio.create_task(self._refresh(), name="registry-refresh")

    async def drain(self) -> None:
        """Say the worker takes no new sessions (agents stop picking it at once)."""
        self.state = "draining"
        await self._write_quietly()

    async def stop(self) -> None:
        """Stop refreshing and remove the entry."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.key)
                pipe.zrem(self.index, self.key)
                await pipe.execute()
        except Exception as e:  # the entry then expires by itself
            logger.warning("could not remove {} from the registry: {}", self.key, e)
        await self._redis.aclose()

    async def _write(self) -> None:
        now_ms = int(time.time() * 1000)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key, mapping=self.fields())
            pipe.pexpire(self.key, self._ttl_ms)
            pipe.zadd(self.index, {self.key: now_ms + self._ttl_ms})
            pipe.zremrangebyscore(self.index, "-inf", now_ms)  # entries of workers that died
            await pipe.execute()

    async def _write_quietly(self) -> None:
        """A write whose failure is logged once per outage; the next refresh tries again."""
        try:
            await self._write()
            if self._failing:
                logger.info("registry {} is back: {} re-registered", self.redis_url, self.key)
            self._failing = False
        except Exception as e:
            if not self._failing:
                logger.warning(
                    "registry {} unreachable ({}); retrying every {} s", self.redis_url, e, self._refresh_secs
                )
            self._failing = True

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_secs)
            await self._write_quietly()
