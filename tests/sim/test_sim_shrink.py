"""The shrinker past ddmin: simpler faults in place, sets of faults dropped together."""

from __future__ import annotations

from collections.abc import Sequence

from sim import Plan, SimFault, shrink


def _ids(faults: Sequence[SimFault]) -> set[int]:
    return {int(f.params["tot_pages"]) for f in faults if f.kind == "target"}


def test_a_pair_that_must_go_together_goes() -> None:
    """Fails with all of 1-4, or with 1 and 2 when 3 and 4 are both gone: ddmin stops at
    1-4 (no single one can go); dropping a pair reaches two faults."""
    a, c, b, d = (
        SimFault(0.01 * i, "target", {"tot_pages": n}) for i, n in enumerate((1, 3, 2, 4))
    )

    def run(plan: Plan) -> list[str]:
        ids = _ids(plan.faults)
        ok = {1, 2, 3, 4} <= ids or ({1, 2} <= ids and not ids & {3, 4})
        return ["fails"] if ok else []

    result = shrink(Plan(faults=(a, c, b, d)), run)
    assert _ids(result.plan.faults) == {1, 2}
    assert result.failures == ["fails"]


def test_faults_are_replaced_by_simpler_ones_that_still_fail() -> None:
    """A power loss at a crash point becomes a plain one, a subset loss a drop, a crash
    point a kill, when the run fails just the same."""
    plan = Plan(
        faults=(
            SimFault(0.01, "power", {"mode": "subset", "point": "after_write", "nth": 2}),
            SimFault(0.02, "crash", {"point": "after_evict", "nth": 1}),
        )
    )

    def run(plan: Plan) -> list[str]:
        kinds = [f.kind for f in plan.faults]
        return ["fails"] if "power" in kinds and ("kill" in kinds or "crash" in kinds) else []

    result = shrink(plan, run)
    assert [f.to_dict() for f in result.plan.faults] == [
        {"at": 0.01, "kind": "power", "mode": "drop"},
        {"at": 0.02, "kind": "kill"},
    ]
