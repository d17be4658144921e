"""Bench section 6, policy quality: the pager's policies on traces, beside Belady's optimal."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from protocol import pack_bits

from ..benchlib import (
    a0_faults,
    belady_faults,
    hotset_trace,
    lru_faults,
    zipf_ranking,
    zipf_trace,
)
from .options import BenchError, Sizes


class TraceMemory:
    """A memory of `capacity` frames driven by a trace through a real pager policy object.

    It does what the pager does around its policy: a touch sets the gfn's accessed bit
    (hv's EPT bit, set by every access, faulting or not); a miss is a fault: the gfn comes
    in (`paged_in`, as after a guest fault) and, the memory being over its size, the
    policy chooses victims (`paged_out`). The `accessed` callable reads and clears bits
    like hv's op. Memory starts empty, as Belady's count assumes: the first `capacity`
    misses are free of evictions but still count as faults, for every policy alike.
    """

    def __init__(self, policy_name: str, nr_gfns: int, capacity: int) -> None:
        from pager.policy import make_policy

        self.capacity = capacity
        self.resident: set[int] = set()
        self.bits = bytearray(nr_gfns)
        self.faults = 0
        self.policy = make_policy(policy_name, nr_gfns, self._accessed)
        for g in range(nr_gfns):
            self.policy.paged_out(g)  # nothing resident yet

    async def _accessed(self, start: int, count: int) -> bytes:
        window = self.bits[start : start + count]
        self.bits[start : start + count] = bytes(count)
        return pack_bits(window)

    async def run(self, trace: Sequence[int]) -> int:
        """Play the trace; the number of faults."""
        resident, bits, policy = self.resident, self.bits, self.policy
        for g in trace:
            bits[g] = 1
            if g not in resident:
                self.faults += 1
                resident.add(g)
                policy.paged_in(g)
                if len(resident) > self.capacity:
                    victims = await policy.choose(len(resident) - self.capacity, lambda _: False)
                    if not victims:
                        raise BenchError(f"{policy.name} chose no victim")
                    for v in victims:
                        resident.remove(v)  # KeyError: the policy chose a gfn not resident
                        policy.paged_out(v)
        return self.faults


async def bench_policy(
    sizes: Sizes, policies: Sequence[str], say: Callable[[str], None]
) -> dict[str, Any]:
    """Faults per 1,000 accesses on two traces: each policy next to Belady's optimal, exact
    LRU, and (Zipf only: its probabilities are known) the best online policy, A0."""
    n, cap, length = sizes.policy_gfns, sizes.policy_capacity, sizes.policy_len
    traces = {
        "zipf": zipf_trace(n, length, 0.99, seed=11),
        "hotset": hotset_trace(
            n, length, hot=cap // 2, shift_every=length // 10, hot_fraction=0.9, seed=12
        ),
    }
    out: dict[str, Any] = {
        "nr_gfns": n,
        "capacity": cap,
        "accesses": length,
        "traces": {},
    }
    for name, trace in traces.items():
        opt = belady_faults(trace, cap) * 1000 / length
        row: dict[str, Any] = {"belady": opt}
        bounds = {"lru": lru_faults(trace, cap)}
        if name == "zipf":
            bounds["a0"] = a0_faults(trace, cap, zipf_ranking(n, seed=11))
        runs = {}
        for p in policies:
            mem = TraceMemory(p, n, cap)
            runs[p] = await mem.run(trace)
        for p, faults in {**bounds, **runs}.items():
            row[p] = faults * 1000 / length
            row[f"{p}_ratio"] = row[p] / opt if opt else float("nan")
        out["traces"][name] = row
        say(
            f"  {name}: optimal {opt:.1f}/1000, "
            + ", ".join(
                f"{p} {row[p]:.1f} ({row[p + '_ratio']:.2f}x)" for p in (*bounds, *policies)
            )
        )
    return out
