"""A server in a subprocess for tests and benchmarks: start it, wait until it answers, stop it after.

Needs ``httpx`` (the ``dev`` extra) when readiness is a URL.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO

from loguru import logger

LOG_TAIL_CHARS = 3000


def free_port() -> int:
    """A TCP port nobody listens on now (bind port 0 on 127.0.0.1, read it back, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Terminate ``process`` and wait up to ``timeout`` seconds for it, then kill it."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        logger.warning("pid {} did not exit {} s after SIGTERM: killing it", process.pid, timeout)
        process.kill()
        process.wait()


def _url_answers(url: str, timeout: float) -> Callable[[], bool]:
    import httpx

    def answers() -> bool:
        return httpx.get(url, timeout=timeout).status_code == 200

    return answers


def _tail(out: IO[bytes]) -> str:
    """The end of the output so far (``pread``: the offset the child writes at stays where it is)."""
    size = os.fstat(out.fileno()).st_size
    start = max(0, size - LOG_TAIL_CHARS)
    return os.pread(out.fileno(), size - start, start).decode(errors="replace")


@contextlib.contextmanager
def serving(
    command: list[str],
    *,
    health: str | Callable[[], bool],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
    ready_secs: float = 180.0,
    poll_secs: float = 0.3,
    health_timeout: float = 2.0,
    stop_secs: float = 15.0,
) -> Iterator[subprocess.Popen]:
    """Run ``command`` until the block ends; yields the process once it is ready.

    ``health`` is a URL (ready when a GET answers 200) or a function (ready when it returns true; an
    ``httpx.HTTPError`` or ``OSError`` from it means not yet). The process's stdout and stderr go to
    ``log`` (overwritten), or to a temporary file when none is given. A :class:`RuntimeError` with the
    last lines of that output is raised when the process exits before it is ready or is not ready after
    ``ready_secs``. After the block: SIGTERM, ``stop_secs`` to exit, then SIGKILL.
    """
    import httpx

    ready = _url_answers(health, health_timeout) if isinstance(health, str) else health
    what = " ".join(command[:4])
    with open(log, "w+b") if log else tempfile.TemporaryFile() as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=None if env is None else dict(env), stdout=out, stderr=subprocess.STDOUT
        )
        logger.debug("started `{}` (pid {})", what, process.pid)
        try:
            started = time.monotonic()
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"`{what}` exited with {process.returncode} before it was ready"
                        f"{f' (log: {log})' if log else ''}:\n{_tail(out)}"
                    )
                try:
                    if ready():
                        break
                except (httpx.HTTPError, OSError):
                    pass
                if time.monotonic() - started > ready_secs:
                    raise RuntimeError(
                        f"`{what}` was not ready after {ready_secs:.0f} s"
                        f"{f' (log: {log})' if log else ''}:\n{_tail(out)}"
                    )
                time.sleep(poll_secs)
            logger.debug("`{}` ready after {:.1f} s", what, time.monotonic() - started)
            yield process
        finally:
            stop(process, stop_secs)
