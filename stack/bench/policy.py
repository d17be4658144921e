"""Bench section 6, policy quality: the pager's policies on traces, beside Belady's optimal."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pager.policy import policy_label

from ..benchlib import (
    a0_faults,
    belady_faults,
    hotset_trace,
    lru_faults,
    zipf_ranking,
    zipf_trace,
)
from ..policylab.reference import arc_faults, lfu_faults
from ..policylab.replay import ReplayError, TraceMemory
from ..policylab.traces import loop_trace
from .options import BenchError, Sizes

__all__ = ["TraceMemory", "bench_policy"]


async def bench_policy(
    sizes: Sizes, policies: Sequence[str], say: Callable[[str], None]
) -> dict[str, Any]:
    """Faults per 1,000 accesses on three traces: each policy next to Belady's optimal,
    exact LRU, ARC, perfect LFU, and (Zipf only: its probabilities are known) the best
    online policy, A0. The third trace loops over 5/4 of the memory: exact LRU misses
    every access."""
    n, cap, length = sizes.policy_gfns, sizes.policy_capacity, sizes.policy_len
    traces = {
        "zipf": zipf_trace(n, length, 0.99, seed=11),
        "hotset": hotset_trace(
            n, length, hot=cap // 2, shift_every=length // 10, hot_fraction=0.9, seed=12
        ),
        "scan": loop_trace(n, length, cap * 5 // 4, seed=13),
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
        bounds = {
            "lru": lru_faults(trace, cap),
            "arc": arc_faults(trace, cap),
            "lfu": lfu_faults(trace, cap),
        }
        if name == "zipf":
            bounds["a0"] = a0_faults(trace, cap, zipf_ranking(n, seed=11))
        runs = {}
        for p in policies:
            try:
                runs[p] = TraceMemory(p, n, cap).run(trace)
            except ReplayError as exc:
                raise BenchError(f"{policy_label(p)}: {exc}") from None
        for p, faults in {**bounds, **runs}.items():
            row[p] = faults * 1000 / length
            row[f"{p}_ratio"] = row[p] / opt if opt else float("nan")
        out["traces"][name] = row
        say(
            f"  {name}: optimal {opt:.1f}/1000, "
            + ", ".join(
                f"{policy_label(p)} {row[p]:.1f} ({row[p + '_ratio']:.2f}x)"
                for p in (*bounds, *policies)
            )
        )
    return out
