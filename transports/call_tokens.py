"""Short-lived per-call tokens: the webhook hands one to Twilio, the media stream must bring it back.

A token is ``<expiry>.<HMAC-SHA256(secret, "<call_sid>.<expiry>")>``: it binds the stream to the call
the signed webhook started, and stops working after ``ttl_secs``.

Every process and host that may receive the stream needs the secret of the one that issued the token. The
secret is, in order: the one given (the Twilio auth token, which every host has), $VIVAVOCE_STREAM_TOKEN_SECRET,
the ``shared`` one (agent hosts with ``--registry`` agree on a random secret kept in Redis), or a random one
for this process alone. In production set $VIVAVOCE_STREAM_TOKEN_SECRET (or use the auth token) rather than
rely on the one in Redis: it is then in your secret store, not readable by whoever can read the Redis.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable

# Without an auth token (local development) the serving processes of `serve --workers N` still need one
# secret between them: the webhook and the stream may reach different processes.
SHARED_SECRET_ENV = "VIVAVOCE_STREAM_TOKEN_SECRET"


class InvalidCallToken(ValueError):
    """The stream's token is missing, malformed, for another call, or expired; says which."""


class CallTokens:
    """Issues and verifies stream tokens with one secret (random per process unless given)."""

    def __init__(
        self, secret: bytes | None = None, ttl_secs: float = 60.0, *, shared: Callable[[], bytes] | None = None
    ):
        """Tokens signed with ``secret`` (else $VIVAVOCE_STREAM_TOKEN_SECRET, else ``shared()``, else random)
        and valid for ``ttl_secs``."""
        from_env = os.environ.get(SHARED_SECRET_ENV)
        if secret:
            self._secret = secret
        elif from_env:
            self._secret = from_env.encode()
        else:
            self._secret = shared() if shared else secrets.token_bytes(32)
        self._ttl = ttl_secs

    def _sign(self, call_sid: str, expiry: int) -> str:
        return hmac.new(self._secret, f"{call_sid}.{expiry}".encode(), hashlib.sha256).hexdigest()

    def issue(self, call_sid: str, *, now: float | None = None) -> str:
        """A token for ``call_sid``."""
        expiry = int((time.time() if now is None else now) + self._ttl)
        return f"{expiry}.{self._sign(call_sid, expiry)}"

    def verify(self, call_sid: str, token: object, *, now: float | None = None) -> None:
        """Raise :class:`InvalidCallToken` unless ``token`` was issued for ``call_sid`` and is still valid."""
        if not token:
            raise InvalidCallToken("missing stream token")
        if not isinstance(token, str):
            raise InvalidCallToken("malformed stream token")
        expiry_text, _, signature = token.partition(".")
        if not (expiry_text.isascii() and expiry_text.isdigit()) or len(signature) != 64:
            raise InvalidCallToken("malformed stream token")
        if not hmac.compare_digest(signature, self._sign(call_sid, int(expiry_text))):
            raise InvalidCallToken("stream token does not match this call")
        if int(expiry_text) < (time.time() if now is None else now):
            raise InvalidCallToken("stream token expired")
