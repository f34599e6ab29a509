"""Calls shared by agent hosts through Redis: leases on live calls, each call's conversation, how it ended.

`vivavoce serve BOT --registry redis://HOST:6379/0` on several hosts behind one load balancer: a call's
media stream may reach any host, so what a call needs beyond its own pipeline lives in Redis.

Key layout (one Redis, database of the URL):

- ``vivavoce:call:<sid>:lease``: the holder's id (host, pid, boot), set with NX and an expiry of
  :data:`LEASE_SECS`, renewed every :data:`RENEW_SECS` while the call lives, deleted at hang-up only by its
  holder (a Lua compare-and-delete). A host that dies stops renewing: its calls can be taken over once
  their leases expire.
- ``vivavoce:calls:live``: a sorted set of call SIDs scored by their lease's expiry (ms since the epoch), so
  the calls live on every host are one ``ZCOUNT`` away (no ``KEYS`` scan).
- ``vivavoce:call:<sid>:context``: the call's LLM context messages (JSON), saved after each turn.
- ``vivavoce:call:<sid>:ended``: why the call ended (``hung up``, ``transferred``...), set by the host that
  ran it. A call whose stream ended without it (its host died) is continued by another host.
- ``vivavoce:stream-token-secret``: the stream-token secret the hosts share when none is configured.

The context and the end are kept for :data:`CALL_STATE_SECS` after the last write.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from loguru import logger

from vivavoce.live_sessions import LiveCalls, check_session_id
from vivavoce.registry import MissingDependencyError
from vivavoce.worker_directory import KEY_PREFIX, RegistryUnavailableError

try:
    from redis.exceptions import RedisError
except ImportError:  # without the `fleet` extra RedisCalls says what to install; nothing else needs redis
    RedisError = ConnectionError  # type: ignore[misc,assignment]
_REDIS_ERRORS = (RedisError, OSError)
_Result = TypeVar("_Result")

LEASE_SECS = 4.0
"""A live call's lease outlives its host by at most this long (three missed renewals)."""
RENEW_SECS = 1.0
CALL_STATE_SECS = 3600
"""How long a call's context and end are kept after the last write."""
LIVE_INDEX = f"{KEY_PREFIX}:calls:live"
SECRET_KEY = f"{KEY_PREFIX}:stream-token-secret"

# Take the lease if nobody holds it, and index the call by the lease's expiry; drop long-expired entries.
_CLAIM = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('zadd', KEYS[2], ARGV[3], ARGV[4])
  redis.call('zremrangebyscore', KEYS[2], '-inf', ARGV[5])
  return 1
end
return 0
"""
# Extend our lease; take it again if it vanished (Redis restarted under the call); 0 if another holder has it.
_RENEW = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('zadd', KEYS[2], ARGV[3], ARGV[4])
  return 1
end
return 0
"""
# Compare-and-delete: only the holder releases a lease.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  redis.call('zrem', KEYS[2], ARGV[2])
  return 1
end
return 0
"""


def call_key(call_sid: str, part: str) -> str:
    """The key of one part (lease, context, ended) of a call's state."""
    return f"{KEY_PREFIX}:call:{check_session_id(call_sid)}:{part}"


def _unavailable(method: Callable[..., _Result]) -> Callable[..., _Result]:
    """Redis's errors as :class:`RegistryUnavailableError` (a ``ConnectionError`` naming the URL): callers
    need not import redis."""

    @functools.wraps(method)
    def checked(self: RedisCalls, *args: Any, **kwargs: Any) -> _Result:
        try:
            return method(self, *args, **kwargs)
        except _REDIS_ERRORS as e:
            raise RegistryUnavailableError(f"the call registry at {self.url} does not answer: {e}") from None

    return checked


class RedisCalls(LiveCalls):
    """Live-call leases, conversations and call ends in the Redis at ``url``, shared by every agent host.

    Methods are synchronous (redis-py's thread-safe client): async code calls them through
    ``asyncio.to_thread``. Redis failing under live calls ends no call: a claim is then granted locally
    (and written to Redis by the next renewal that gets through), a save is retried at the next turn.
    """

    def __init__(
        self,
        url: str,
        *,
        lease_secs: float = LEASE_SECS,
        renew_secs: float = RENEW_SECS,
        connect_timeout_secs: float = 2.0,
    ):
        """Connect to ``url`` and check it answers; :class:`RegistryUnavailableError` names it if not."""
        try:
            from redis import Redis
        except ImportError as e:
            raise MissingDependencyError(f"--registry needs redis-py ({e}): pip install 'vivavoce[fleet]'") from e

        self.url = url
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.lease_secs = lease_secs
        self._lease_ms = int(lease_secs * 1000)
        self._renew_secs = renew_secs
        self._redis = Redis.from_url(
            url, socket_connect_timeout=connect_timeout_secs, socket_timeout=connect_timeout_secs
        )
        try:
            self._redis.ping()
        except _REDIS_ERRORS as e:
            raise RegistryUnavailableError(f"the call registry at {url} does not answer: {e}") from None
        self._claim = self._redis.register_script(_CLAIM)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._failing = False  # Redis errors are logged once per outage, not once per call and second
        # A thread, not a task: leases are renewed even while the event loop is busy with calls.
        self._renewer = threading.Thread(target=self._renew_loop, name="vivavoce-call-leases", daemon=True)
        self._renewer.start()

    # --- LiveCalls -----------------------------------------------------------------------------------

    def claim(self, session_id: str) -> bool:
        """Take the call's lease; False when a live host holds it (a second stream for the call)."""
        key = call_key(session_id, "lease")
        now = _now_ms()
        try:
            taken = self._claim(
                keys=[key, LIVE_INDEX],
                args=[self.holder, self._lease_ms, now + self._lease_ms, session_id, now - self._lease_ms],
            )
        except _REDIS_ERRORS as e:
            self._warn(f"cannot claim call {session_id}: {e}: taking it on this host alone")
            taken = 1
        else:
            self._recovered()
        if taken:
            with self._lock:
                self._held.add(session_id)
        return bool(taken)

    def release(self, session_id: str) -> None:
        """Delete the call's lease if this host holds it."""
        with self._lock:
            self._held.discard(session_id)
        try:
            self._release(keys=[call_key(session_id, "lease"), LIVE_INDEX], args=[self.holder, session_id])
        except _REDIS_ERRORS as e:
            self._warn(f"cannot release call {session_id}: {e}: its lease will expire")

    def count(self) -> int:
        """Calls live on every host (this host's own when Redis does not answer)."""
        try:
            return int(self._redis.zcount(LIVE_INDEX, _now_ms(), "+inf"))
        except _REDIS_ERRORS as e:
            self._warn(f"cannot count live calls: {e}")
            with self._lock:
                return len(self._held)

    def close(self) -> None:
        """Stop renewing (leases of calls still running here then expire) and disconnect."""
        self._stopped.set()
        self._renewer.join(timeout=5)
        self._redis.close()

    def _renew_loop(self) -> None:
        while not self._stopped.wait(self._renew_secs):
            with self._lock:
                held = sorted(self._held)
            if not held:
                continue
            expiry = _now_ms() + self._lease_ms
            try:
                with self._redis.pipeline(transaction=False) as pipe:
                    for sid in held:
                        self._renew(
                            keys=[call_key(sid, "lease"), LIVE_INDEX],
                            args=[self.holder, self._lease_ms, expiry, sid],
                            client=pipe,
                        )
                    renewed = pipe.execute()
            except _REDIS_ERRORS as e:
                self._warn(f"cannot renew the leases of {len(held)} live calls: {e}")
                continue
            self._recovered()
            for sid, ok in zip(held, renewed, strict=True):
                if not ok:
                    logger.warning(f"Call {sid}: its lease is held by another host now")

    def _warn(self, message: str) -> None:
        if not self._failing:
            self._failing = True
            logger.warning(f"call registry {self.url}: {message}")

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.info(f"call registry {self.url} answers again")

    # --- What a call leaves behind for the next host ------------------------------------------------

    @_unavailable
    def is_claimed(self, call_sid: str) -> bool:
        """Whether a host holds the call's lease now."""
        return bool(self._redis.exists(call_key(call_sid, "lease")))

    @_unavailable
    def end_call(self, call_sid: str, reason: str) -> None:
        """Record that the call really ended (so its ``<Connect action>`` does not continue it)."""
        self._redis.set(call_key(call_sid, "ended"), reason, ex=CALL_STATE_SECS)

    @_unavailable
    def ended(self, call_sid: str) -> str | None:
        """Why the call ended, or None while it has not (or its host died before saying)."""
        value = self._redis.get(call_key(call_sid, "ended"))
        return value.decode() if value is not None else None

    @_unavailable
    def save_context(self, call_sid: str, messages_json: str) -> None:
        """Keep the call's LLM context messages (a JSON list)."""
        self._redis.set(call_key(call_sid, "context"), messages_json, ex=CALL_STATE_SECS)

    @_unavailable
    def load_context(self, call_sid: str) -> list[dict[str, Any]]:
        """The call's saved LLM context messages ([] if none)."""
        raw = self._redis.get(call_key(call_sid, "context"))
        messages = json.loads(raw) if raw else []
        return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []

    @_unavailable
    def shared_secret(self) -> bytes:
        """The stream-token secret every host agrees on: the first host to start sets a random one."""
        self._redis.set(SECRET_KEY, secrets.token_hex(32), nx=True)
        value = self._redis.get(SECRET_KEY)
        if not value:  # deleted between the two commands: vanishingly rare, and another try settles it
            return self.shared_secret()
        return bytes(value)


class ContextKeeper:
    """Saves one call's LLM context to :class:`RedisCalls` whenever a turn adds to it.

    Saves run one at a time off the event loop, always of the newest messages: a slow Redis delays the
    copy, never the conversation.
    """

    def __init__(self, store: RedisCalls, call_sid: str, context: Any):
        """Keep ``context`` (a pipecat ``LLMContext``) of ``call_sid``."""
        self._store = store
        self._sid = call_sid
        self._context = context
        self._saved: str | None = None
        self._dirty = False
        self._writer: asyncio.Task | None = None
        self._failed = False

    def follow(self, user_aggregator: Any, assistant_aggregator: Any) -> None:
        """Save after each user message and each assistant turn (pipecat's aggregator events)."""
        user_aggregator.add_event_handler("on_user_turn_message_added", self._changed)
        assistant_aggregator.add_event_handler("on_assistant_turn_stopped", self._changed)

    async def _changed(self, *_args: Any) -> None:
        self._dirty = True
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())

    async def flush(self) -> None:
        """Save what is not saved yet (the call ends)."""
        self._dirty = True
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        await self._write()

    async def _write(self) -> None:
        while self._dirty:
            self._dirty = False
            # Standard messages are dicts; a provider-specific message object has no JSON form to keep.
            snapshot = json.dumps([m for m in self._context.get_messages() if isinstance(m, dict)], default=str)
            if snapshot == self._saved:
                continue
            try:
                await asyncio.to_thread(self._store.save_context, self._sid, snapshot)
            except RegistryUnavailableError as e:
                if not self._failed:
                    logger.warning(f"Call {self._sid}: cannot save its context in the call registry: {e}")
                self._failed = True
                continue
            self._saved = snapshot


def _now_ms() -> int:
    return int(time.time() * 1000)
