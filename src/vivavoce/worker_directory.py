"""The fleet's worker directory: the ready model workers, as they register themselves in Redis.

Key layout (``workers/PROTOCOL.md``, "Registry"), written by each worker, read here:

- ``vivavoce:worker:<family>:<boot_id>``: a hash with the worker's ``family``, ``url``, ``models`` and
  ``voices`` (JSON lists; ``resident``, where voices load on demand: those loaded now), ``max_sessions``,
  ``active_sessions``, ``queue_depth``, ``state`` (``ready`` or ``draining``), ``boot_id`` and ``version``;
  it expires a few seconds after the worker stops refreshing it.
- ``vivavoce:workers:<family>``: a sorted set of those keys, scored by when each expires (ms since the
  epoch), so the live ones are one ``ZRANGEBYSCORE`` away: no ``KEYS`` scan, and a crashed worker drops
  out when its score passes even before its hash expires.

A worker is picked by load with the power of two choices: two ready workers that match at random, the one
that has the voice loaded, else the less loaded of them. Nothing here is a health check: the agent notices
a dead worker on its socket. :class:`WorkerRoute` is one conversation's way to a worker (the TTS, ASR and
Moshi clients share it).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from loguru import logger

REGISTRY_ENV = "VIVAVOCE_REGISTRY"
"""Where the registry is when a bot file or a worker does not say: ``redis://HOST:6379/0``."""

KEY_PREFIX = "vivavoce"

ROUTE_TRIES = 3
"""Workers tried, one after another, before a connection fails."""
CONNECT_TIMEOUT_SECS = 1.0
"""A worker that does not complete the handshake within this is skipped (a dead host can take a minute)."""
AVOID_SECS = 10.0
"""A worker that failed or refused is not picked again for this long (its registry entry may outlive it)."""
PING_INTERVAL_SECS = 2.0
PING_TIMEOUT_SECS = 5.0
"""Keepalive on a routed socket: a worker whose host vanished (no close ever comes) is noticed within about
7 s instead of websockets' default 40 s. Workers answer pings from their event loop, which model work never
blocks (it runs in a thread)."""


def worker_key(family: str, boot_id: str) -> str:
    """The hash of one worker."""
    return f"{KEY_PREFIX}:worker:{family}:{boot_id}"


def family_index(family: str) -> str:
    """The sorted set of a family's workers, scored by expiry."""
    return f"{KEY_PREFIX}:workers:{family}"


class RegistryUnavailableError(ConnectionError):
    """The registry cannot be reached; the message says where it was looked for."""


class MalformedEntryError(ValueError):
    """A registry entry lacks a field or has one of the wrong type."""


@dataclass(frozen=True)
class WorkerEntry:
    """One registered worker, as it last described itself."""

    key: str
    family: str
    url: str
    boot_id: str
    version: str
    state: str
    max_sessions: int
    active_sessions: int
    queue_depth: int
    models: tuple[str, ...] = ()
    voices: tuple[str, ...] = ()
    resident: tuple[str, ...] | None = None
    """The voices loaded now (None: every voice is: the worker loads none on demand)."""

    @classmethod
    def parse(cls, key: str, fields: Mapping[bytes | str, bytes | str]) -> WorkerEntry:
        """The entry from the hash's fields; :class:`MalformedEntryError` says what is wrong."""
        text = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        try:
            entry = cls(
                key=key,
                family=text["family"],
                url=text["url"],
                boot_id=text["boot_id"],
                version=text.get("version", ""),
                state=text["state"],
                max_sessions=int(text["max_sessions"]),
                active_sessions=int(text["active_sessions"]),
                queue_depth=int(text.get("queue_depth", "0")),
                models=tuple(_string_list(text.get("models", "[]"))),
                voices=tuple(_string_list(text.get("voices", "[]"))),
                resident=tuple(_string_list(text["resident"])) if "resident" in text else None,
            )
        except KeyError as e:
            raise MalformedEntryError(f"{key}: missing field {e}") from None
        except (ValueError, TypeError) as e:
            raise MalformedEntryError(f"{key}: {e}") from None
        if not entry.url.startswith(("ws://", "wss://")):
            raise MalformedEntryError(f"{key}: url {entry.url!r} is not ws:// or wss://")
        if entry.max_sessions < 1:
            raise MalformedEntryError(f"{key}: max_sessions {entry.max_sessions} < 1")
        return entry

    @property
    def load(self) -> float:
        """Sessions and queued requests per session slot: what the choice compares."""
        return (self.active_sessions + self.queue_depth) / self.max_sessions

    def has_loaded(self, voice: str | None) -> bool:
        """Whether ``voice`` is loaded now (None, or a worker without on-demand voices: yes)."""
        return voice is None or self.resident is None or voice in self.resident

    @property
    def has_room(self) -> bool:
        """Ready and not full (a full worker refuses at the handshake anyway)."""
        return self.state == "ready" and self.active_sessions < self.max_sessions


def _string_list(raw: str) -> list[str]:
    value = json.loads(raw)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"not a JSON list of strings: {raw[:60]!r}")
    return value


@dataclass(frozen=True)
class Selector:
    """Which workers may serve: a family, and optionally a voice or a model they must have."""

    family: str
    voice: str | None = None
    model: str | None = None

    def matches(self, entry: WorkerEntry) -> bool:
        """Whether ``entry`` is of the family and has the voice and model asked for."""
        return (
            entry.family == self.family
            and (self.voice is None or self.voice in entry.voices)
            and (self.model is None or self.model in entry.models)
        )


_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, WorkerDirectory]] = (
    weakref.WeakKeyDictionary()
)


class WorkerDirectory:
    """Reads the registry at ``url`` (``redis://HOST:PORT/DB``) and picks workers by load."""

    def __init__(self, url: str, *, connect_timeout_secs: float = 2.0):
        """Create the client; nothing connects until the first read."""
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        self.url = url
        # One retry on a fresh connection: after Redis restarts, a pooled connection's first command fails
        # ("Connection closed by server") though Redis is back; a failover must not lose an attempt to it.
        self._redis = Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout_secs,
            socket_timeout=connect_timeout_secs,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
        )
        self._reported: set[str] = set()  # malformed keys already logged

    @classmethod
    def shared(cls, url: str) -> WorkerDirectory:
        """This event loop's directory of ``url``: every conversation of a process routes through one
        connection pool (a client per conversation costs a connection and a handshake per call)."""
        loop = asyncio.get_running_loop()
        per_loop = _SHARED.setdefault(loop, {})
        if url not in per_loop:
            per_loop[url] = cls(url)
        return per_loop[url]

    async def close(self) -> None:
        """Close the connections."""
        await self._redis.aclose()

    async def check(self) -> None:
        """Raise :class:`RegistryUnavailableError` when the registry does not answer."""
        from redis.exceptions import RedisError

        try:
            await self._redis.ping()
        except (RedisError, OSError) as e:
            raise RegistryUnavailableError(f"the worker registry at {self.url} does not answer: {e}") from None

    async def workers(self, selector: Selector) -> list[WorkerEntry]:
        """The live workers of the selector's family that match it (ready or draining, full or not)."""
        keys = await self._live_keys(selector.family)
        return [e for e in await self._entries(keys) if selector.matches(e)]

    async def pick(self, selector: Selector, *, exclude: Iterable[str] = ()) -> WorkerEntry | None:
        """A ready worker with room that matches, by the power of two choices (None: there is none).

        The live keys are read in a random order, a few hashes at a time, until two candidates are found: the
        choice reads two or four hashes however large the fleet, and more only when few workers qualify.
        ``exclude``: worker keys not to pick (ones that just failed or refused).
        """
        excluded = set(exclude)
        keys = [k for k in await self._live_keys(selector.family) if k not in excluded]
        random.shuffle(keys)
        found: list[WorkerEntry] = []
        start, size = 0, 4
        while start < len(keys) and len(found) < 2:
            entries = await self._entries(keys[start : start + size])
            found += [e for e in entries if selector.matches(e) and e.has_room]
            start, size = start + size, size * 2
        return choose(found[:2], voice=selector.voice)

    async def _live_keys(self, family: str) -> list[str]:
        from redis.exceptions import RedisError

        try:
            members = await self._redis.zrangebyscore(family_index(family), int(time.time() * 1000), "+inf")
        except (RedisError, OSError) as e:
            raise RegistryUnavailableError(f"the worker registry at {self.url} does not answer: {e}") from None
        return [k.decode() for k in members]

    async def _entries(self, keys: list[str]) -> list[WorkerEntry]:
        """The entries of ``keys`` that exist and parse (a malformed one is logged once and skipped)."""
        from redis.exceptions import RedisError

        if not keys:
            return []
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                hashes = await pipe.execute()
        except (RedisError, OSError) as e:
            raise RegistryUnavailableError(f"the worker registry at {self.url} does not answer: {e}") from None
        entries = []
        for key, fields in zip(keys, hashes, strict=True):
            if not fields:
                continue  # expired between the two reads
            try:
                entries.append(WorkerEntry.parse(key, fields))
            except MalformedEntryError as e:
                if key not in self._reported:
                    self._reported.add(key)
                    logger.warning(f"ignoring a malformed worker registry entry: {e}")
        return entries


def choose(candidates: list[WorkerEntry], rng: Any = random, *, voice: str | None = None) -> WorkerEntry | None:
    """Two at random, the one that has ``voice`` loaded, else the less loaded (one candidate: it; none: None).

    A voice loaded on demand costs the first request its load (bench/README.md, ``resident.py``), more than
    a busier worker costs it."""
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    first, second = rng.sample(candidates, 2)
    rank = lambda e: (not e.has_loaded(voice), e.load)  # noqa: E731
    return first if rank(first) <= rank(second) else second


class WorkerRoute:
    """One conversation's way to a worker: picked from the registry by load, a short connect timeout, a few
    tries; a worker that failed or refused is avoided for a while, so reconnecting lands on another."""

    def __init__(self, registry: str, selector: Selector):
        """Route to workers matching ``selector`` in the registry at ``registry`` (``redis://...``); the
        directory is made on the first connect, in the event loop that uses it."""
        self.registry = registry
        self._directory: WorkerDirectory | None = None
        self.selector = selector
        self.current: WorkerEntry | None = None
        self._avoid: dict[str, float] = {}  # registry key -> when it failed

    async def connect(self, open_socket: Callable[[str, float], Awaitable[Any]]) -> Any:
        """A socket to a worker, from ``open_socket(url, timeout_secs)``; connecting again means the current
        worker failed. :class:`ConnectionError` when no worker answers (:class:`RegistryUnavailableError` when
        the registry does not)."""
        if self._directory is None:
            self._directory = WorkerDirectory.shared(self.registry)
        now = time.monotonic()
        if self.current is not None:
            self._avoid[self.current.key] = now
        self._avoid = {key: at for key, at in self._avoid.items() if now - at < AVOID_SECS}
        failure: Exception | None = None
        for _ in range(ROUTE_TRIES):
            entry = await self._directory.pick(self.selector, exclude=self._avoid)
            if entry is None:
                break
            try:
                socket = await open_socket(entry.url, CONNECT_TIMEOUT_SECS)
                await _not_refused(socket)
            except Exception as e:  # refused (full, draining), unreachable or too slow: the next one
                logger.warning(f"{self.selector.family} worker {entry.url} failed to connect ({e}); trying another")
                self._avoid[entry.key] = time.monotonic()
                failure = e
                continue
            self.current = entry
            logger.debug(f"routed to {self.selector.family} worker {entry.url} (load {entry.load:.2f})")
            return socket
        raise ConnectionError(
            f"no ready {self.selector.family} worker in {self.registry} answered" + (f": {failure}" if failure else "")
        )


REFUSAL_WAIT_SECS = 0.05
"""How long a new socket is watched for a refusal: a full or draining worker closes it (1013) right after the
handshake, the close frame hard on the heels of the handshake's reply. Caught here, the route moves on to
another worker at once; caught later, the first request would be sent into a closed socket."""


async def _not_refused(socket: Any) -> None:
    """Raise :class:`ConnectionRefusedError` when ``socket`` (a websockets client connection) is closed by
    its worker right after opening."""
    wait_closed = getattr(socket, "wait_closed", None)
    if wait_closed is None:
        return
    try:
        await asyncio.wait_for(wait_closed(), REFUSAL_WAIT_SECS)
    except TimeoutError:
        return  # still open: admitted
    raise ConnectionRefusedError(f"refused: {socket.close_code} {socket.close_reason or ''}".strip())
