"""Prometheus metrics of a server (`GET /metrics`): latency, barge-in, sessions, worker failovers.

With `vivavoce serve --workers N` every process writes its samples to PROMETHEUS_MULTIPROC_DIR (set by the
command before the processes start) and any process answers a scrape with the sum over all of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from vivavoce.turns import Turn

LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)
STOP_BUCKETS = (0.01, 0.02, 0.04, 0.06, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)


class ServeMetrics:
    """The histograms one server exports; turns are observed as they complete."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, active_sessions: Callable[[], int]):
        """``active_sessions`` (all processes' sessions) is read at each scrape."""
        self.registry = CollectorRegistry()
        self._multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.voice_to_voice = Histogram(
            "vivavoce_voice_to_voice_seconds",
            "User stops speaking -> first bot audio leaves the transport.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttfb = Histogram(
            "vivavoce_ttfb_seconds", "Time to first byte per service.", ["service"], buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.barge_in = Histogram(
            "vivavoce_barge_in_seconds",
            "Barge-in: detect (speech onset -> VAD), pipeline_stop (VAD -> TTS stops), "
            "audible_stop (VAD -> last bot audio leaves the transport).",
            ["stage"],
            buckets=STOP_BUCKETS,
            registry=self.registry,
        )
        self.turns = Counter("vivavoce_turns", "Turns observed.", registry=self.registry)
        self.failovers = Counter(
            "vivavoce_worker_failovers",
            "Services that lost their model worker mid-call, by service and whether the call went on degraded "
            "(state lost with the worker) or whole; to=none: no other worker answered.",
            ["service", "degraded", "to"],
            registry=self.registry,
        )
        # Counted from the shared live-session claims, so it is already the total over processes.
        self._sessions_registry = CollectorRegistry()
        self._sessions_registry.register(_ActiveSessions(active_sessions))

    def observe_turn(self, turn: Turn) -> None:
        """Record a completed turn."""
        self.turns.inc()
        if turn.voice_to_voice_ms is not None:
            self.voice_to_voice.observe(turn.voice_to_voice_ms / 1000)
        for service, ms in turn.ttfb_ms.items():
            self.ttfb.labels(service=service).observe(ms / 1000)
        if turn.barge_in is not None:
            for stage, ms in turn.barge_in.to_dict().items():
                if ms is not None:
                    self.barge_in.labels(stage=stage).observe(ms / 1000)
        for failover in turn.failovers:
            self.failovers.labels(
                service=failover.service,
                degraded=str(failover.degraded).lower(),
                to="worker" if failover.to_url else "none",
            ).inc()

    def render(self) -> bytes:
        """The text exposition format."""
        if self._multiprocess:
            merged = CollectorRegistry()
            MultiProcessCollector(merged)
            return generate_latest(merged) + generate_latest(self._sessions_registry)
        return generate_latest(self.registry) + generate_latest(self._sessions_registry)


class _ActiveSessions(Collector):
    """A gauge computed at scrape time (not a process-local sample, so never summed per process)."""

    def __init__(self, count: Callable[[], int]):
        self._count = count

    def collect(self):
        yield GaugeMetricFamily("vivavoce_active_sessions", "Sessions (calls) running now.", value=float(self._count()))
