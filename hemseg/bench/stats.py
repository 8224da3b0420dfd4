"""Latency statistics (milliseconds)."""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np


def summarize(samples_ms: Iterable[float]) -> dict[str, float]:
    """p50/p95/p99/mean/stdev/min/max/n of a list of durations in ms (NaN when empty)."""
    a = np.asarray(list(samples_ms), dtype=np.float64)
    if a.size == 0:
        nan = math.nan
        return {"p50": nan, "p95": nan, "p99": nan, "mean": nan, "stdev": nan, "min": nan, "max": nan, "n": 0}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(a.mean()),
        "stdev": float(a.std(ddof=1)) if a.size > 1 else 0.0, "min": float(a.min()), "max": float(a.max()),
        "n": int(a.size),
    }
