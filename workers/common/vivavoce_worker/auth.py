"""API-key authentication for worker HTTP routes and WebSockets.

A key is required unless the worker was started with ``--no-auth``. Clients send it as ``X-API-Key``,
``Authorization: Bearer <key>`` or, for WebSockets only (browsers cannot set headers there), the
``api_key`` query parameter.
"""

from __future__ import annotations

import hmac
import os

from fastapi import HTTPException, Request, WebSocket, status
from loguru import logger

DEFAULT_KEY_ENV = "VIVAVOCE_WORKER_API_KEY"

# RFC 6455 "policy violation": the close code for a refused key.
WS_POLICY_VIOLATION = 1008


class ApiKeyAuth:
    """Checks requests against one API key; ``key=None`` disables the check (``--no-auth``)."""

    def __init__(self, key: str | None):
        """``key``: the expected key, or None to accept every request."""
        if key is not None and not key:
            raise ValueError("the API key is empty")
        self._key = key.encode() if key is not None else None

    @property
    def enabled(self) -> bool:
        """Whether a key is required."""
        return self._key is not None

    def accepts(self, presented: str | None) -> bool:
        """Whether ``presented`` is the key (constant-time compare)."""
        if self._key is None:
            return True
        if not presented:
            return False
        return hmac.compare_digest(presented.encode(), self._key)

    @staticmethod
    def _from_headers(headers) -> str | None:
        if key := headers.get("x-api-key"):
            return key
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    async def __call__(self, request: Request) -> None:
        """FastAPI dependency: ``Depends(auth)`` answers 401 without a valid key."""
        if not self.accepts(self._from_headers(request.headers)):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="missing or wrong API key (send X-API-Key or Authorization: Bearer)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def check_websocket(self, websocket: WebSocket) -> bool:
        """Accept-or-refuse for a WebSocket before ``accept()``.

        Returns True if the key is valid; otherwise closes the socket with 1008 and a reason and
        returns False.
        """
        presented = self._from_headers(websocket.headers) or websocket.query_params.get("api_key")
        if self.accepts(presented):
            return True
        logger.warning("refused a WebSocket without a valid API key from {}", websocket.client)
        # Accept first so that the close frame (code and reason) reaches the client.
        await websocket.accept()
        await websocket.close(code=WS_POLICY_VIOLATION, reason="missing or wrong API key")
        return False


def auth_from_env(env_name: str = DEFAULT_KEY_ENV, *, no_auth: bool = False) -> ApiKeyAuth:
    """The worker's auth: the key from ``env_name``, or none with ``no_auth``.

    Raises ``SystemExit`` with a clear message when the key is required but not set.
    """
    if no_auth:
        logger.warning("--no-auth: this worker accepts requests without an API key (local use only)")
        return ApiKeyAuth(None)
    key = os.environ.get(env_name)
    if not key:
        raise SystemExit(f"set the API key in ${env_name} (or pass --no-auth for local use)")
    return ApiKeyAuth(key)
