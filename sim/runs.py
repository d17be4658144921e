"""Many seeds: run a range (in worker processes when asked), aggregate what they found.

Each seed is independent, so `--jobs J` hands seeds to J processes (`multiprocessing`,
fork where available); results come back in completion order and are reported in seed
order. The summary: seeds per second, faults fired by kind, crash-point coverage, the gfns
lost (to media faults in passing seeds, which may lose copies honestly), and every failing
seed.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pager.faults import CRASH_POINTS

from .scenario import SimResult
from .world import run_seed


@dataclass
class Summary:
    """What a range of seeds found."""

    seeds: int = 0
    passed: int = 0
    failed: list[tuple[int, list[str]]] = field(default_factory=list)
    mismatched: list[int] = field(default_factory=list)  # --check-determinism failures
    fired: Counter[str] = field(default_factory=Counter)
    crash_points: Counter[str] = field(default_factory=Counter)
    lives: int = 0
    ops: int = 0
    page_outs: int = 0
    lost: list[tuple[int, int]] = field(default_factory=list)  # (seed, gfns lost) if any
    wall_s: float = 0.0

    def add(self, r: SimResult) -> None:
        """Count one run in."""
        self.seeds += 1
        if r.ok:
            self.passed += 1
        else:
            self.failed.append((r.seed, r.failures))
        self.fired.update(r.fired)
        self.crash_points.update(r.crash_points)
        self.lives += r.lives
        self.ops += r.guest.get("ops", 0)
        self.page_outs += r.hv_counters.get("page.evicted", 0)
        if r.lost:
            self.lost.append((r.seed, r.lost))

    @property
    def uncovered(self) -> list[str]:
        """Crash points no seed reached."""
        return [p for p in CRASH_POINTS if not self.crash_points[p]]

    @property
    def ok(self) -> bool:
        """No seed failed and every determinism check held."""
        return not self.failed and not self.mismatched

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "seeds": self.seeds,
            "passed": self.passed,
            "failed": [{"seed": s, "failures": f} for s, f in sorted(self.failed)],
            "determinism_mismatches": sorted(self.mismatched),
            "fired": dict(sorted(self.fired.items())),
            "crash_points": {p: self.crash_points[p] for p in CRASH_POINTS},
            "uncovered_crash_points": self.uncovered,
            "pager_lives": self.lives,
            "guest_ops": self.ops,
            "page_outs": self.page_outs,
            "lost_gfns": sum(n for _, n in self.lost),
            "seeds_with_losses": len(self.lost),
            "most_lost": max(self.lost, key=lambda sn: (sn[1], -sn[0]), default=None),
            "wall_s": round(self.wall_s, 3),
            "seeds_per_s": round(self.seeds / self.wall_s, 3) if self.wall_s else 0.0,
        }


def losses_line(lost: Sequence[tuple[int, int]]) -> str | None:
    """One line on the gfns lost by (seed, gfns lost) pairs, or None if none was lost."""
    if not lost:
        return None
    seed, most = max(lost, key=lambda sn: (sn[1], -sn[0]))
    total = sum(n for _, n in lost)
    return (
        f"gfns lost (EIO to the guest): {total} in {len(lost)} seeds, at most {most} (seed {seed})"
    )


def _one(args: tuple[int, str, bool, str | None]) -> tuple[SimResult, str | None]:
    """One seed (and its determinism twin): picklable for the worker processes."""
    seed, scenario, twice, ring_mode = args
    r = run_seed(seed, scenario=scenario, ring_mode=ring_mode)
    r.trace = None
    second = run_seed(seed, scenario=scenario, ring_mode=ring_mode).trace_hash if twice else None
    return r, second


def run_seeds(
    seeds: Sequence[int],
    *,
    scenario: str = "small",
    jobs: int = 1,
    check_determinism: bool = False,
    ring_mode: str | None = None,
    progress: Callable[[SimResult, Summary], None] | None = None,
) -> Summary:
    """Run every seed; `progress(result, summary_so_far)` after each."""
    summary = Summary()
    t0 = time.perf_counter()
    work = [(s, scenario, check_determinism, ring_mode) for s in seeds]
    for r, second in _results(work, jobs):
        summary.add(r)
        if second is not None and second != r.trace_hash:
            summary.mismatched.append(r.seed)
        summary.wall_s = time.perf_counter() - t0
        if progress is not None:
            progress(r, summary)
    summary.wall_s = time.perf_counter() - t0
    return summary


def _results(
    work: list[tuple[int, str, bool, str | None]], jobs: int
) -> Iterator[tuple[SimResult, str | None]]:
    if jobs <= 1 or len(work) <= 1:
        yield from map(_one, work)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(jobs) as pool:
        yield from pool.imap_unordered(_one, work)


__all__ = ["Summary", "run_seeds"]
