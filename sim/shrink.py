"""Shrinking a failing plan: delta debugging (ddmin) over its faults, then simpler faults.

ddmin alone stops at a 1-minimal plan (no single fault can go), which can still be long
when the failure needs faults to line up. So, in rounds until nothing changes: each fault
is replaced by a simpler one where the run still fails (a power loss at a crash point by a
plain one, a subset power loss by a drop, a crash or a store fault by a kill, a long disk
window by a shorter one); while more than 3 are left, sets of 2, 3, ... faults are dropped
together (fewest first); and ddmin runs again on what is left. Then the toggles go. A
candidate is kept while the run still fails (any check). Each run is a pure function of
(seed, plan), so the result is reproducible; the number of runs is bounded.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from .plan import Plan, SimFault

T = TypeVar("T")

#: Runs a shrink may make at most (each is one whole simulated run).
MAX_RUNS: Final = 400

#: Plans at most this long skip the set-removal pass (the issue's bound).
SHORT: Final = 3

#: Subsets of one size a set-removal pass tries at most.
MAX_SETS: Final = 60


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


def simpler(fault: SimFault) -> Iterator[SimFault]:
    """Simpler faults to try in `fault`'s place, simplest first (same instant)."""
    p = dict(fault.params)
    if fault.kind == "power":
        if "point" in p:
            yield SimFault(fault.at, "power", {"mode": "drop"})
            yield SimFault(fault.at, "power", {"mode": p.get("mode", "drop")})
        elif p.get("mode") == "subset":
            yield SimFault(fault.at, "power", {"mode": "drop"})
    elif fault.kind in ("crash", "store"):
        yield SimFault(fault.at, "kill", {})
    elif fault.kind == "disk" and float(p["for_s"]) > 1e-4:
        yield SimFault(fault.at, "disk", {**p, "for_s": round(float(p["for_s"]) / 2, 6)})


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

    def fails(faults: Sequence[SimFault]) -> bool:
        return fails_plan(plan.with_faults(faults))

    if fails(()):
        best = plan.with_faults(())
    else:
        faults = ddmin(plan.faults, fails)
        while True:
            before = faults
            faults = _simplify(faults, fails)
            if len(faults) > SHORT:
                faults = _drop_sets(faults, fails)
            if faults != before:
                faults = ddmin(faults, fails)
            if faults == before or runs >= max_runs:
                break
        best = plan.with_faults(faults)
    for toggle in sorted(best.toggles):
        candidate = Plan(best.toggles - {toggle}, best.faults)
        if fails_plan(candidate):
            best = candidate
    return ShrinkResult(best, runs, last.get(best.to_json(), []))


def _simplify(
    faults: list[SimFault], fails: Callable[[Sequence[SimFault]], bool]
) -> list[SimFault]:
    """Each fault replaced by the simplest variant that still fails (repeatedly)."""
    faults = list(faults)
    for i in range(len(faults)):
        changed = True
        while changed:
            changed = False
            for variant in simpler(faults[i]):
                candidate = [*faults[:i], variant, *faults[i + 1 :]]
                if fails(candidate):
                    faults, changed = candidate, True
                    break
    return faults


def _drop_sets(
    faults: list[SimFault], fails: Callable[[Sequence[SimFault]], bool]
) -> list[SimFault]:
    """The first plan without some 2, 3, ... faults (one at least left) that still
    fails, fewest dropped first; `faults` if none (MAX_SETS tries per size at most)."""
    for k in range(2, len(faults)):
        tries = itertools.islice(itertools.combinations(range(len(faults)), k), MAX_SETS)
        for drop in tries:
            candidate = [f for i, f in enumerate(faults) if i not in drop]
            if fails(candidate):
                return candidate
    return faults


__all__ = ["MAX_RUNS", "ShrinkResult", "ddmin", "shrink", "simpler"]
