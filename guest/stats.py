"""Latency bookkeeping: the guest's access latencies in a fixed-size histogram.

Memory does not grow with the number of accesses (a guest left running for a day keeps
the same few hundred KB); percentiles are within 0.1% (see `transport.histogram`).
"""

from __future__ import annotations

from transport.histogram import DEFAULT_DIGITS, DEFAULT_HIGHEST_S, LatencyHistogram


class Latencies(LatencyHistogram):
    """Seconds per access: p50, p99, max (exact) and mean (exact) in `summary_ms()`.

    `add` is the guest's per-access cost (two histograms per access: a tenth of a default
    sim seed's guest time went to hdrh's `record_value`, five Python calls deep), so it
    records a sample with hdrh's bucket arithmetic written out in one function: the same
    bucket, the same counts, minimum and maximum as `record_value` (a test compares them
    over the whole range)."""

    __slots__ = ("_half_count", "_half_mag", "_mask")

    def __init__(self, highest_s: float = DEFAULT_HIGHEST_S, digits: int = DEFAULT_DIGITS) -> None:
        super().__init__(highest_s, digits)
        h = self._hist
        if h.unit_magnitude != 0:  # lowest trackable value 1 (µs): always, as built above
            raise AssertionError("Latencies assumes hdrh's unit magnitude 0")
        self._mask = h.sub_bucket_mask
        self._half_mag = h.sub_bucket_half_count_magnitude
        self._half_count = h.sub_bucket_half_count

    def add(self, seconds: float) -> None:
        """Record one duration (negative ones count as zero), as `LatencyHistogram.add`."""
        if seconds < 0:
            seconds = 0.0
        us = round(seconds * 1e6)
        if us > self._top_us:
            us = self._top_us
        h = self._hist
        # hdrh's _counts_index_for(us) with unit magnitude 0: its bucket is the bit length
        # of (us | sub_bucket_mask) less (half-count magnitude + 1).
        bucket = (us | self._mask).bit_length() - self._half_mag - 1
        h.counts[((bucket + 1) << self._half_mag) + (us >> bucket) - self._half_count] += 1
        h.total_count += 1
        if us < h.min_value:
            h.min_value = us
        if us > h.max_value:
            h.max_value = us
        n = self.count  # the exact figures, as LatencyHistogram.add keeps them
        self.min_s = min(self.min_s, seconds) if n else seconds
        self.max_s = max(self.max_s, seconds)
        self.sum_s += seconds
        self.count = n + 1
