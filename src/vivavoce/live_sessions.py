"""Which sessions (calls) are live, across every process (and host) serving one bot.

A call's media stream may land on any serving process, so a claim on its id is taken where every process
sees it: a second stream for the same call is refused whichever process it reaches, and /health counts
every process's sessions. :class:`LiveCalls` is that interface; it has two implementations:

- :class:`LiveSessions` (one host, `vivavoce serve --workers N`): each live session is a file named after
  it in a directory the processes share, created atomically. A process that dies leaves its files behind;
  they name its pid, so they are recognised as stale and ignored.
- :class:`vivavoce.call_store.RedisCalls` (many hosts, `vivavoce serve --registry redis://...`): each claim
  is a Redis lease renewed while the call lives, which expires a few seconds after its host dies.
"""

from __future__ import annotations

import os
import re
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

from loguru import logger

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def check_session_id(session_id: str) -> str:
    """``session_id`` if it is safe as a file or key name; ``ValueError`` otherwise."""
    if not _SAFE_NAME.match(session_id):
        raise ValueError(f"not a valid session id: {session_id[:40]!r}")
    return session_id


class LiveCalls(ABC):
    """Claims on live session ids shared by every process serving one bot.

    The methods are synchronous and short (a file or one Redis round trip): servers that must not block
    their event loop call :meth:`claim` and :meth:`release` through ``asyncio.to_thread``.
    """

    @abstractmethod
    def claim(self, session_id: str) -> bool:
        """Mark ``session_id`` live for this process; False when a live process already holds it.
        ``ValueError`` when the id is not a valid session id."""

    @abstractmethod
    def release(self, session_id: str) -> None:
        """The session ended (only the holder's claim is removed)."""

    @abstractmethod
    def count(self) -> int:
        """Live sessions in all processes."""

    def close(self) -> None:  # noqa: B027 - optional: most implementations hold nothing to close
        """Stop what runs in the background and close connections."""


class LiveSessions(LiveCalls):
    """Claims on session ids in a directory shared by the serving processes of one host."""

    def __init__(self, directory: str | Path | None = None):
        """``directory`` is shared by all processes of one server; a private temporary one by default."""
        self.directory = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="vivavoce-sessions-"))
        self.directory.mkdir(parents=True, exist_ok=True)

    def claim(self, session_id: str) -> bool:
        """Mark ``session_id`` live for this process; False when a live process already holds it."""
        path = self._path(session_id)
        # Written first, then linked into place: the claim appears atomically, already naming its holder.
        fd, staged = tempfile.mkstemp(dir=self.directory, prefix=".claim-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            for _ in range(2):
                try:
                    os.link(staged, path)
                    return True
                except FileExistsError:
                    if self._holder_alive(path):
                        return False
                    path.unlink(missing_ok=True)  # left by a process that died: take it over
            return False
        finally:
            os.unlink(staged)

    def release(self, session_id: str) -> None:
        """The session ended."""
        path = self._path(session_id)
        try:
            if path.read_text() == str(os.getpid()):
                path.unlink()
        except FileNotFoundError:
            pass

    def count(self) -> int:
        """Live sessions in all processes."""
        return sum(1 for path in self.directory.iterdir() if not path.name.startswith(".") and self._holder_alive(path))

    def _path(self, session_id: str) -> Path:
        return self.directory / check_session_id(session_id)

    @staticmethod
    def _holder_alive(path: Path) -> bool:
        try:
            pid = int(path.read_text() or "0")
        except (FileNotFoundError, ValueError):
            return False
        if pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            logger.debug(f"session {path.name}: its process {pid} is gone")
            return False
        except PermissionError:
            return True
        return True
