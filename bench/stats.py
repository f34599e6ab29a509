"""Figures the benchmarks share (run as ``python bench/NAME.py``: this directory is on the path)."""

from __future__ import annotations

import numpy as np


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100, numpy's linear interpolation), to 0.1; None for no values."""
    return round(float(np.percentile(values, q)), 1) if values else None
