"""`vivavoce serve --workers N`: N serving processes, each with its own listening socket on one port.

uvicorn's own process manager shares one listening socket, and the kernel hands most new connections to
whichever process is hot, so the load is uneven. With SO_REUSEPORT each process listens on its own socket
and the kernel spreads connections over them evenly (bench/twilio_load.py with --workers; figures in
bench/README.md). A process that dies is restarted; one
that keeps dying stops the server with its exit status.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import time
from typing import Any

from loguru import logger

APP_FACTORY = "vivavoce.server:app_from_environment"
RESTARTS_PER_MINUTE = 5


def listening_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A socket bound to ``host:port`` that other processes of this server may bind too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(2048)
    return sock


def _serve_one(host: str, port: int, options: dict[str, Any]) -> None:
    """One serving process: its own socket in the port's group, the app from the environment."""
    import uvicorn

    sock = listening_socket(host, port)
    config = uvicorn.Config(APP_FACTORY, factory=True, **options)
    uvicorn.Server(config).run(sockets=[sock])


def serve_processes(workers: int, host: str, port: int, options: dict[str, Any]) -> int:
    """Run ``workers`` serving processes until SIGINT/SIGTERM; returns the exit status."""
    # Held (bound, not listening) so the port is checked now and stays ours while processes restart.
    try:
        holder = listening_socket(host, port, listen=False)
    except OSError as e:
        logger.error(f"cannot listen on {host}:{port}: {e.strerror}")
        return 1
    context = multiprocessing.get_context("spawn")
    stopping = False

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def start() -> multiprocessing.Process:
        process = context.Process(target=_serve_one, args=(host, port, options), name="vivavoce-serve", daemon=False)
        process.start()
        return process

    processes = [start() for _ in range(workers)]
    restarts: list[float] = []
    status = 0
    try:
        while not stopping:
            time.sleep(0.5)
            for i, process in enumerate(processes):
                if process.is_alive() or stopping:
                    continue
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > RESTARTS_PER_MINUTE:
                    logger.error(f"serving processes keep exiting (last status {process.exitcode}): stopping")
                    status, stopping = process.exitcode or 1, True
                    break
                logger.warning(f"serving process {process.pid} exited with status {process.exitcode}: restarting it")
                processes[i] = start()
    finally:
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(timeout=15)
            if process.is_alive():
                process.kill()
        holder.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
