"""A real ``redis-server`` for tests and benchmarks: on a free port, no persistence, stopped after.

The Debian package (``make redis``) provides the binary. :meth:`RedisServer.restart` stops and starts it on
the same port with nothing kept, as a Redis host that restarts under live calls does.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Iterator

from vivavoce.testing.processes import free_port, serving


class RedisServer:
    """One ``redis-server`` process; ``url`` is ``redis://127.0.0.1:PORT/0``."""

    def __init__(self, port: int | None = None):
        """Choose the port (a free one by default); :meth:`running` starts it."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make redis` (Debian package redis-server)")
        self.binary = binary
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _answers(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    @contextlib.contextmanager
    def running(self) -> Iterator[RedisServer]:
        """Run the server until the block ends."""
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with serving(command, health=self._answers, ready_secs=20, stop_secs=5):
            yield self
