"""A worker in a fleet: admission (full and draining workers refuse at the handshake), its registry entry,
and the drain on SIGTERM.

A full worker refuses a new session with close code 1013 (try again later) before any request, so an agent
that picked it from a registry entry a second old moves on to another and nothing is over-admitted. On
SIGTERM (the orchestrator's stop) the worker drains: it says so in the registry at once, refuses new
sessions, lets the requests it is generating finish (at most ``drain_secs``), then exits; the agents' next
sentences go to other workers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import time
from dataclasses import dataclass

from loguru import logger

REGISTRY_ENV = "VIVAVOCE_REGISTRY"
TRY_AGAIN_LATER = 1013
"""WebSocket close code of a refused session (RFC 6455's 'try again later')."""


@dataclass
class Admission:
    """Whether a new session may start: at most ``max_sessions`` at once, none while draining."""

    max_sessions: int
    draining: bool = False
    active: int = 0

    def refusal(self) -> str | None:
        """Why a new session is refused now (None: it is admitted)."""
        if self.draining:
            return "draining: this worker is shutting down"
        if self.active >= self.max_sessions:
            return f"full: all {self.max_sessions} sessions are in use"
        return None


def add_fleet_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--registry --advertise-url --max-sessions --drain-secs``."""
    parser.add_argument(
        "--registry",
        default=os.environ.get(REGISTRY_ENV),
        metavar="redis://HOST:6379/0",
        help=f"register in the fleet's registry once ready (default ${REGISTRY_ENV}; unset: no registry)",
    )
    parser.add_argument(
        "--advertise-url",
        default=None,
        metavar="ws://HOST:PORT/v1/stream",
        help="the URL agents connect to (default: this host's name and --port)",
    )
    parser.add_argument("--max-sessions", type=int, default=16, help="sessions at once; more are refused (1013)")
    parser.add_argument(
        "--drain-secs", type=float, default=30.0, help="on SIGTERM, how long requests in progress may finish"
    )
    return parser


def advertised_url(args: argparse.Namespace, path: str = "/v1/stream") -> str:
    """``--advertise-url``, or ``ws://<host>:<port><path>`` (this machine's name when listening on all)."""
    if args.advertise_url:
        return args.advertise_url
    host = socket.gethostname() if args.host in ("0.0.0.0", "::", "") else args.host
    return f"ws://{host}:{args.port}{path}"


class Drain:
    """Runs the drain once: registry state, refusal, wait for the requests in progress, then ``exit()``."""

    def __init__(self, admission: Admission, busy, registration=None, *, drain_secs: float):
        """``busy()``: how many requests are in progress; ``registration``: the registry entry, if any."""
        self.admission, self._busy, self.registration, self.drain_secs = admission, busy, registration, drain_secs
        self.started = False

    async def run(self, exit_now) -> None:
        """Drain (once), then call ``exit_now()``."""
        if self.started:
            return
        self.started = True
        self.admission.draining = True
        if self.registration is not None:
            await self.registration.drain()
        deadline = time.monotonic() + self.drain_secs
        logger.info("draining: refusing new sessions, {} request(s) in progress", self._busy())
        while self._busy() > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._busy():
            logger.warning("drain: {} request(s) still in progress after {} s; exiting", self._busy(), self.drain_secs)
        exit_now()
