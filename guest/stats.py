"""Latency bookkeeping: every access's latency in a flat array, percentiles at the end."""

from __future__ import annotations

import math
from array import array


class Latencies:
    """Seconds per access, kept as doubles (8 bytes per access, no objects)."""

    __slots__ = ("samples",)

    def __init__(self) -> None:
        self.samples = array("d")

    def add(self, seconds: float) -> None:
        """Record one access."""
        self.samples.append(seconds)

    def __len__(self) -> int:
        return len(self.samples)

    def summary_ms(self) -> dict[str, float]:
        """p50, p99, max and mean in milliseconds (zeros when nothing was recorded)."""
        n = len(self.samples)
        if n == 0:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
        ordered = sorted(self.samples)

        def pct(p: float) -> float:
            # Nearest-rank percentile: the smallest sample with at least p% at or below it.
            return ordered[max(0, math.ceil(p / 100 * n) - 1)] * 1e3

        return {
            "p50": round(pct(50), 3),
            "p99": round(pct(99), 3),
            "max": round(ordered[-1] * 1e3, 3),
            "mean": round(sum(ordered) / n * 1e3, 3),
        }
