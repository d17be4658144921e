"""Fixed-size latency histograms: memory set at creation, never grown by samples.

A thin wrapper around HdrHistogram (the `hdrhistogram` package) that every package may
use for durations (guest access latencies, populate round trips, vCPU pauses): values are
recorded in seconds, kept in microsecond buckets with `digits` significant decimal digits
(3: every reported percentile is within 0.1% of the exact nearest-rank value), and
summarised in milliseconds. Pure computation, no I/O; it lives in `transport/` because
`protocol/` may import only the standard library and msgpack (tests/test_layout.py).

The count, the exact sum (for the mean), the exact minimum and maximum are plain numbers
beside the bucket array; a sample above `highest_s` is counted in the top bucket and still
sets the exact maximum, so nothing recorded is ever dropped.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Mapping
from typing import Final

from hdrh.histogram import HdrHistogram

#: Default range top: one hour, far above any access that is not stuck.
DEFAULT_HIGHEST_S: Final = 3600.0

#: Default precision: 3 significant digits (0.1%).
DEFAULT_DIGITS: Final = 3

#: Percentiles a summary reports by default, and the key each one gets.
SUMMARY_PERCENTILES: Final = {"p50": 50.0, "p99": 99.0}


class LatencyHistogram:
    """Durations in seconds, in a histogram whose size depends only on its range."""

    __slots__ = ("_hist", "_top_us", "count", "max_s", "min_s", "sum_s")

    def __init__(self, highest_s: float = DEFAULT_HIGHEST_S, digits: int = DEFAULT_DIGITS) -> None:
        if highest_s <= 0:
            raise ValueError("highest_s must be positive")
        self._top_us = max(2, round(highest_s * 1e6))
        self._hist = HdrHistogram(1, self._top_us, digits)
        self.count = 0
        self.sum_s = 0.0
        self.min_s = 0.0
        self.max_s = 0.0

    def add(self, seconds: float) -> None:
        """Record one duration (negative ones count as zero)."""
        if seconds < 0:
            seconds = 0.0
        us = round(seconds * 1e6)
        self._hist.record_value(us if us <= self._top_us else self._top_us)
        if self.count == 0 or seconds < self.min_s:
            self.min_s = seconds
        if seconds > self.max_s:
            self.max_s = seconds
        self.count += 1
        self.sum_s += seconds

    def __len__(self) -> int:
        return self.count

    def merge(self, other: LatencyHistogram) -> None:
        """Add every sample of `other` (same range and precision) to this histogram."""
        if other.count == 0:
            return
        self._hist.add(other._hist)
        self.min_s = other.min_s if self.count == 0 else min(self.min_s, other.min_s)
        self.max_s = max(self.max_s, other.max_s)
        self.count += other.count
        self.sum_s += other.sum_s

    def reset(self) -> None:
        """Forget every sample (the memory stays)."""
        self._hist.reset()
        self.count = 0
        self.sum_s = self.min_s = self.max_s = 0.0

    def percentile_s(self, pct: float) -> float:
        """The value at percentile `pct` (0..100) in seconds; 0.0 when empty."""
        if self.count == 0:
            return 0.0
        # The bucket's top, but never above what was really seen.
        return min(self._hist.get_value_at_percentile(pct) / 1e6, self.max_s)

    def summary_ms(
        self, percentiles: Mapping[str, float] = SUMMARY_PERCENTILES
    ) -> dict[str, float]:
        """The `percentiles` (default p50, p99), max and mean in milliseconds, rounded to the
        microsecond (zeros when nothing was recorded)."""
        if self.count == 0:
            return {**dict.fromkeys(percentiles, 0.0), "max": 0.0, "mean": 0.0}
        values = self._hist.get_percentile_to_value_dict(list(percentiles.values()))
        out = {
            key: round(min(values[pct] / 1e6, self.max_s) * 1e3, 3)
            for key, pct in percentiles.items()
        }
        out["max"] = round(self.max_s * 1e3, 3)
        out["mean"] = round(self.sum_s / self.count * 1e3, 3)
        return out

    def buckets_ms(self, per_decade: int = 5) -> list[list[float]]:
        """Counts in log-spaced bins for a plot: `[low_ms, high_ms, count]` per non-empty bin,
        `per_decade` bins per factor of ten, from 1 us up."""
        counts: dict[int, int] = {}
        for us, n in self._recorded():
            k = math.floor(math.log10(max(1, us)) * per_decade + 1e-9)
            counts[k] = counts.get(k, 0) + n
        return [
            [
                round(10 ** (k / per_decade) / 1e3, 6),
                round(10 ** ((k + 1) / per_decade) / 1e3, 6),
                n,
            ]
            for k, n in sorted(counts.items())
        ]

    def _recorded(self) -> list[tuple[int, int]]:
        """(bucket's highest value in µs, count) of every non-empty bucket, lowest first: what
        hdrh's recorded iterator yields, without its Python step over all ~23,000 buckets
        (160 ms a call, a fifth of a small sim seed; this scans them in C)."""
        h = self._hist
        counts = list(h.counts)
        return [
            (h.get_highest_equivalent_value(h.get_value_from_index(i)), n)
            for i, n in enumerate(counts)
            if n
        ]

    def nbytes(self) -> int:
        """Bytes of the bucket array (fixed at creation: the range and the precision)."""
        return ctypes.sizeof(self._hist.counts)
