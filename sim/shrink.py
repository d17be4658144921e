"""Shrinking a failing plan: delta debugging (ddmin) over its faults, then its toggles.

A candidate is kept while the run still fails (any check). Each run is a pure function of
(seed, plan), so the result is reproducible; the number of runs is bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from .plan import Plan

T = TypeVar("T")

#: Runs a shrink may make at most (each is one whole simulated run).
MAX_RUNS: Final = 400


@dataclass
class ShrinkResult:
    """The smallest failing plan found and what it cost."""

    plan: Plan
    runs: int
    failures: list[str]


def ddmin(items: Sequence[T], fails: Callable[[list[T]], bool]) -> list[T]:
    """Zeller's ddmin: a 1-minimal sub-list of `items` for which `fails` still holds
    (`fails(list(items))` is assumed true)."""
    current = list(items)
    n = 2
    while len(current) >= 2:
        size = -(-len(current) // n)
        chunks = [current[i : i + size] for i in range(0, len(current), size)]
        for chunk in chunks:
            if fails(chunk):
                current, n = chunk, 2
                break
        else:
            for i in range(len(chunks)):
                rest = [x for j, c in enumerate(chunks) if j != i for x in c]
                if fails(rest):
                    current, n = rest, max(n - 1, 2)
                    break
            else:
                if n >= len(current):
                    break
                n = min(n * 2, len(current))
    if len(current) == 1 and fails([]):
        return []
    return current


def shrink(
    plan: Plan, run: Callable[[Plan], list[str]], *, max_runs: int = MAX_RUNS
) -> ShrinkResult:
    """The smallest plan for which `run(plan)` (the failures of one run) is not empty."""
    runs = 0
    last: dict[str, list[str]] = {}

    def fails_plan(candidate: Plan) -> bool:
        nonlocal runs
        key = candidate.to_json()
        if key not in last:
            if runs >= max_runs:
                return False
            runs += 1
            last[key] = run(candidate)
        return bool(last[key])

    if fails_plan(plan.with_faults(())):
        best = plan.with_faults(())
    else:
        faults = ddmin(plan.faults, lambda fs: fails_plan(plan.with_faults(fs)))
        best = plan.with_faults(faults)
    for toggle in sorted(best.toggles):
        candidate = Plan(best.toggles - {toggle}, best.faults)
        if fails_plan(candidate):
            best = candidate
    return ShrinkResult(best, runs, last.get(best.to_json(), []))


__all__ = ["MAX_RUNS", "ShrinkResult", "ddmin", "shrink"]
