"""The benchmark's own logic: Belady's optimal, traces and percentiles."""

from __future__ import annotations

import collections

from hypothesis import given
from hypothesis import strategies as st

from stack.benchlib import belady_faults, hotset_trace, percentile, zipf_trace


def brute_force_opt(trace: list[int], capacity: int) -> int:
    resident: set[int] = set()
    faults = 0
    for i, gfn in enumerate(trace):
        if gfn in resident:
            continue
        faults += 1
        if len(resident) >= capacity:

            def next_use(g: int, i: int = i) -> int:
                rest = trace[i + 1 :]
                return rest.index(g) if g in rest else len(trace)

            resident.remove(max(resident, key=next_use))
        resident.add(gfn)
    return faults


@given(st.lists(st.integers(0, 9), max_size=60), st.integers(1, 6))
def test_belady_matches_brute_force(trace: list[int], capacity: int) -> None:
    assert belady_faults(trace, capacity) == brute_force_opt(trace, capacity)


def lru_faults(trace: list[int], capacity: int) -> int:
    cache: collections.OrderedDict[int, None] = collections.OrderedDict()
    faults = 0
    for g in trace:
        if g in cache:
            cache.move_to_end(g)
            continue
        faults += 1
        cache[g] = None
        if len(cache) > capacity:
            cache.popitem(last=False)
    return faults


def test_zipf_is_skewed_and_opt_beats_lru() -> None:
    trace = zipf_trace(1000, 20000, 0.99, seed=3)
    counts = collections.Counter(trace).most_common()
    assert counts[0][1] > 50 * max(1, counts[-1][1])  # the head is far hotter than the tail
    assert belady_faults(trace, 100) < lru_faults(trace, 100)
    assert zipf_trace(1000, 100, 0.99, seed=3) == trace[:100]  # seeded


def test_hotset_concentrates_accesses() -> None:
    trace = hotset_trace(10000, 10000, hot=50, shift_every=5000, hot_fraction=0.9, seed=1)
    first = collections.Counter(trace[:5000])
    assert sum(c for _, c in first.most_common(50)) > 0.85 * 5000


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([5.0], 99) == 5.0
