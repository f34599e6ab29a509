"""A real ``redis-server`` for tests and benchmarks: on a free port, no persistence, stopped after.

The Debian package (``make redis``) provides the binary. :meth:`RedisServer.restart` stops and starts it on
the same port with nothing kept, as a Redis host that restarts under live calls does.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

from vivavoce.testing.processes import free_port, serving, stop


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
        with contextlib.ExitStack() as self._stack:
            self._start()
            yield self

    def _start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process: subprocess.Popen = self._stack.enter_context(
            serving(command, health=self._answers, ready_secs=20, stop_secs=5)
        )

    def restart(self, down_secs: float = 0.0) -> None:
        """Stop the server (SIGTERM), wait ``down_secs``, start it again on the same port, empty; returns once
        it answers. Blocking: call it in a thread from async code."""
        stop(self.process, 5)
        time.sleep(down_secs)
        self._start()
