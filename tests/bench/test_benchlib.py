"""The benchmark's own logic: Belady's optimal, A0, LRU, traces and percentiles."""

from __future__ import annotations

import collections

from hypothesis import given
from hypothesis import strategies as st

from stack.benchlib import (
    a0_faults,
    belady_faults,
    hotset_trace,
    lru_faults,
    percentile,
    zipf_ranking,
    zipf_trace,
)


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


def brute_force_lru(trace: list[int], capacity: int) -> int:
    last_use: dict[int, int] = {}  # resident gfn -> when it was last touched
    faults = 0
    for i, g in enumerate(trace):
        if g not in last_use:
            faults += 1
            if len(last_use) >= capacity:
                del last_use[min(last_use, key=last_use.__getitem__)]
        last_use[g] = i
    return faults


def test_zipf_is_skewed_and_opt_beats_lru() -> None:
    trace = zipf_trace(1000, 20000, 0.99, seed=3)
    counts = collections.Counter(trace).most_common()
    assert counts[0][1] > 50 * max(1, counts[-1][1])  # the head is far hotter than the tail
    assert belady_faults(trace, 100) < brute_force_lru(trace, 100)
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


@given(st.lists(st.integers(0, 9), max_size=60), st.integers(1, 6))
def test_lru_matches_brute_force(trace: list[int], capacity: int) -> None:
    assert lru_faults(trace, capacity) == brute_force_lru(trace, capacity)


def brute_force_a0(trace: list[int], capacity: int, gfn_of_rank: list[int]) -> int:
    def rank(g: int) -> int:
        return gfn_of_rank.index(g) if g in gfn_of_rank else len(gfn_of_rank)

    memory: list[int] = []  # most probable first
    faults = 0
    for gfn in trace:
        if gfn not in memory:
            faults += 1
            memory = [*sorted(memory, key=rank)[: capacity - 1], gfn]
    return faults


@given(
    st.lists(st.integers(0, 9), max_size=60),
    st.integers(1, 6),
    st.permutations(list(range(10))),
    st.integers(0, 10),
)
def test_a0_evicts_the_least_probable_resident(
    trace: list[int], capacity: int, order: list[int], known: int
) -> None:
    ranking = order[:known]  # gfns left out rank below every ranked one
    faults = a0_faults(trace, capacity, ranking)
    if known == 10:
        assert faults == brute_force_a0(trace, capacity, ranking)
    assert belady_faults(trace, capacity) <= faults <= len(trace)


def test_a0_keeps_the_most_probable_gfns() -> None:
    # Capacity 3: 0 and 1 (the two most probable) stay, one frame floats for the rest.
    trace = [0, 1, 2, 3, 0, 1, 4, 0, 5, 1]
    assert a0_faults(trace, 3, [0, 1, 2, 3, 4, 5]) == 6
    assert a0_faults(trace, 3, [5, 4, 3, 2, 1, 0]) > 6


def test_zipf_ranking_is_the_generators_own() -> None:
    trace = zipf_trace(500, 50_000, 0.99, seed=7)
    ranking = zipf_ranking(500, seed=7)
    assert sorted(ranking) == list(range(500))
    counts = collections.Counter(trace)
    assert [g for g, _ in counts.most_common(3)] == ranking[:3]
    # A0 with the true probabilities beats LRU on independent draws.
    assert a0_faults(trace, 50, ranking) < lru_faults(trace, 50)
