"""Latency bookkeeping: the guest's access latencies in a fixed-size histogram.

Memory does not grow with the number of accesses (a guest left running for a day keeps
the same few hundred KB); percentiles are within 0.1% (see `transport.histogram`).
"""

from __future__ import annotations

from transport.histogram import LatencyHistogram


class Latencies(LatencyHistogram):
    """Seconds per access: p50, p99, max (exact) and mean (exact) in `summary_ms()`."""

    __slots__ = ()
