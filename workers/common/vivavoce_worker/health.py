"""``GET /health``: what the worker runs, where, and how busy it is."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

Extra = dict[str, Any] | Callable[[], dict[str, Any]]


def rss_bytes() -> int:
    """This process's resident set size."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: peak RSS is the best available
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def memory_report() -> dict[str, Any]:
    """RSS, plus torch's CUDA allocator figures when torch is loaded and a GPU is in use."""
    report: dict[str, Any] = {"rss_bytes": rss_bytes()}
    torch = sys.modules.get("torch")  # never import torch just to report on it
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        report["cuda_allocated_bytes"] = torch.cuda.memory_allocated()
        report["cuda_reserved_bytes"] = torch.cuda.memory_reserved()
        report["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return report


def health_router(*, model: str, device: str, extra: Extra | None = None) -> APIRouter:
    """A router with ``GET /health``.

    ``extra``: more fields (e.g. ``active_sessions``, ``queue_depth``), a dict or a function called
    on every request so that live counters stay current.
    """
    started = time.monotonic()
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": "ok",
            "model": model,
            "device": device,
            "memory": memory_report(),
            "uptime_s": round(time.monotonic() - started, 3),
        }
        body.update(extra() if callable(extra) else (extra or {}))
        return body

    return router
