"""The shared latency histogram: percentiles within 0.1%, exact max and mean, and memory
that depends on its range alone, never on the number of samples."""

from __future__ import annotations

import ctypes
import gc
import math
import random
import sys
import types

import pytest

from guest import Latencies
from transport.histogram import LatencyHistogram


def deep_size(obj: object) -> int:
    """Bytes of `obj` and of everything it references (ctypes buffers included)."""
    seen: set[int] = set()
    todo = [obj]
    total = 0
    while todo:
        o = todo.pop()
        if id(o) in seen or isinstance(o, type | types.ModuleType | types.FunctionType):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, ctypes._SimpleCData | ctypes.Array | ctypes.Structure):
            total += ctypes.sizeof(o)  # getsizeof does not count the C buffer
        todo.extend(gc.get_referents(o))
    return total


def nearest_rank(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    rank = math.ceil(round(pct / 100 * len(ordered), 9))  # 0.999 * 20000 is not 19980.0
    return ordered[max(0, rank - 1)]


@pytest.mark.parametrize("seed", range(5))
def test_percentiles_within_a_tenth_of_a_percent(seed: int) -> None:
    rng = random.Random(seed)
    # Latencies as the guest sees them: mostly ~100 µs, a tail of page-ins up to seconds.
    samples = [rng.lognormvariate(math.log(1.5e-4), 1.2) for _ in range(20_000)]
    h = LatencyHistogram()
    for s in samples:
        h.add(s)
    for pct in (50.0, 90.0, 99.0, 99.9):
        exact = nearest_rank(samples, pct)
        # Whole microseconds, then 3 significant digits: both errors bounded.
        assert abs(h.percentile_s(pct) - exact) <= exact * 1e-3 + 1e-6, pct
    s = h.summary_ms()
    assert set(s) == {"p50", "p99", "max", "mean"}
    assert s["max"] == round(max(samples) * 1e3, 3)
    assert s["mean"] == pytest.approx(sum(samples) / len(samples) * 1e3, abs=1e-3)
    assert len(h) == len(samples)


def test_empty_merge_reset_and_out_of_range() -> None:
    assert LatencyHistogram().summary_ms() == {"p50": 0, "p99": 0, "max": 0, "mean": 0}
    a, b, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for i in range(1, 1001):
        (a if i % 3 else b).add(i / 1e4)
        both.add(i / 1e4)
    a.merge(b)
    a.merge(LatencyHistogram())
    assert a.summary_ms() == both.summary_ms() and a.min_s == both.min_s == 1e-4
    top = LatencyHistogram(highest_s=1.0)
    top.add(5.0)  # above the range: counted in the top bucket, the max stays exact
    top.add(-1.0)  # a clock step back counts as zero
    assert len(top) == 2 and top.summary_ms()["max"] == 5000.0
    assert top.percentile_s(100) <= 5.0
    top.reset()
    assert len(top) == 0 and top.summary_ms()["max"] == 0
    with pytest.raises(ValueError):
        LatencyHistogram(highest_s=0)


def _size_after(make: type[LatencyHistogram], n: int) -> int:
    h = make()
    rng = random.Random(n)
    for _ in range(n):
        h.add(rng.expovariate(1e4))
    return deep_size(h)


def test_memory_does_not_depend_on_the_number_of_samples() -> None:
    small, big = _size_after(Latencies, 1_000), _size_after(Latencies, 200_000)
    # The bucket array dominates and is fixed (~190 KB for 1 µs .. 1 h at 3 digits);
    # a few Python ints/floats may change size class as they grow: allow 64 bytes.
    assert Latencies().nbytes() > 100_000
    assert small > Latencies().nbytes()
    assert abs(big - small) <= 64, (small, big)


class _Leaky(LatencyHistogram):
    """The bug the test above exists to catch: every sample kept as well."""

    __slots__ = ("kept",)

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[float] = []

    def add(self, seconds: float) -> None:
        super().add(seconds)
        self.kept.append(seconds)


def test_the_memory_check_catches_a_structure_that_grows() -> None:
    small, big = _size_after(_Leaky, 1_000), _size_after(_Leaky, 200_000)
    assert big - small > 64 * 1000  # what the test above would have failed on


def test_buckets_ms_count_every_sample_in_log_bins() -> None:
    h = LatencyHistogram()
    for s in (0.000005, 0.00005, 0.0005, 0.005, 0.005, 0.5):
        h.add(s)
    bins = h.buckets_ms(per_decade=1)
    assert [n for _, _, n in bins] == [1, 1, 1, 2, 1]
    assert sum(n for _, _, n in bins) == h.count
    for lo, hi, _ in bins:
        assert hi == pytest.approx(lo * 10)
    assert bins[0][0] <= 0.005 < bins[0][1]
    assert bins[-1][0] <= 500 < bins[-1][1]
    assert LatencyHistogram().buckets_ms() == []


def test_recorded_buckets_match_hdrh_recorded_iterator() -> None:
    """The C-speed scan of the buckets yields exactly what hdrh's own iterator yields."""
    rng = random.Random(7)
    h = LatencyHistogram()
    for _ in range(5_000):
        h.add(rng.lognormvariate(-7, 2))  # µs .. seconds, many buckets
    h.add(7200.0)  # above the range: counted in the top bucket
    expected = [
        (item.value_iterated_to, item.count_added_in_this_iter_step)
        for item in h._hist.get_recorded_iterator()
    ]
    assert h._recorded() == expected
    assert sum(n for _, n in expected) == h.count
