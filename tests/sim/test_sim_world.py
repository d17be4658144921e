"""The whole stack in one process: many seeds pass, each run replays byte for byte, and
plans (the sim's own and `xpemu stress`'s) replay."""

from __future__ import annotations

import json
import os

import pytest
import trio

from pager.faults import CRASH_POINTS
from sim import KINDS, SCENARIOS, Plan, SimFault, make_plan, plan_from_json, run_seed, run_seeds
from stack.schedule import make_schedule, schedule_to_list

#: Seeds of the default suite (XPEMU_SLOW=1: the issue's 5,000).
SEEDS = 5000 if os.environ.get("XPEMU_SLOW") else 300


@pytest.mark.timeout(1800)
def test_many_seeds_pass_and_reach_every_crash_point() -> None:
    summary = run_seeds(range(SEEDS), scenario="tiny")
    assert summary.ok, summary.failed[:3]
    assert set(summary.fired) == set(KINDS)
    # Every named crash point is reached by some seed of the range (issue 15; 300 tiny
    # seeds reached all 12, after_reconcile the rarest with 5).
    assert summary.uncovered == [], summary.crash_points
    assert set(summary.crash_points) == set(CRASH_POINTS)


@pytest.mark.timeout(1800)
def test_same_seed_same_trace_in_the_default_scenario() -> None:
    seeds = range(20 if os.environ.get("XPEMU_SLOW") else 1)
    summary = run_seeds(seeds, scenario="default", check_determinism=True)
    assert summary.ok, summary.failed[:3]
    assert summary.mismatched == []


def test_same_seed_same_trace() -> None:
    summary = run_seeds(range(20), scenario="tiny", check_determinism=True)
    assert summary.seeds == 20
    assert summary.mismatched == []
    hashes = {run_seed(s, scenario="tiny").trace_hash for s in (1, 2, 3)}
    assert len(hashes) == 3  # and different seeds differ


def test_trace_is_json_lines_in_time_order() -> None:
    r = run_seed(4, scenario="tiny", keep_trace=True)
    assert r.trace is not None
    events = [json.loads(line) for line in r.trace.lines]
    assert {"t", "c", "e"} <= set(events[5])
    times = [e["t"] for e in events if e["t"] >= 0]
    assert times == sorted(times)
    assert {"hv", "pager", "guest", "sim"} <= {e["c"] for e in events}
    assert events[-1]["e"] == "end" or any(e["e"] == "end" for e in events)


def test_plan_json_round_trip_and_bumped_floor() -> None:
    plan = make_plan(7, 1.0, nr_gfns=64, base={"kill": 10, "power": 2})
    counts = plan.counts()
    assert counts["kill"] >= 10 and counts["power"] >= 2
    again, meta = plan_from_json(plan.to_json(7, "small"), window=1.0)
    assert again == plan and meta == {"seed": 7, "scenario": "small"}


def test_a_stress_schedule_replays_in_the_sim() -> None:
    schedule = make_schedule(5, 40.0, count=24)
    doc = json.dumps({"seed": 5, "schedule": schedule_to_list(schedule)})
    plan, meta = plan_from_json(doc, window=SCENARIOS["small"].window)
    assert meta["from"] == "xpemu stress"
    assert len(plan.faults) == 24
    assert max(f.at for f in plan.faults) <= SCENARIOS["small"].window
    r = run_seed(5, plan=plan)
    assert r.ok, r.failures
    assert sum(r.fired.values()) == 24
    assert dict(r.fired) == plan.counts()


def test_a_cut_plan_ends_a_pager_life_and_it_recovers() -> None:
    plan = Plan(faults=(SimFault(0.05, "cut", {"direction": "to_client", "fraction": 0.5}),))
    r = run_seed(0, plan=plan, keep_trace=True)
    assert r.ok, r.failures
    assert r.trace is not None
    assert any('"e": "cut"' in line for line in r.trace.lines)
    assert r.lives >= 3  # the first, the one after the cut, the one after the store check


def test_xen_ring_mode_reports_the_stall() -> None:
    plan = Plan(faults=(SimFault(0.02, "kill"),))
    r = run_seed(0, plan=plan, ring_mode="xen")
    assert not r.ok and r.stalled
    assert r.failures[0].startswith("stall:"), r.failures  # the cause, named first


def test_ddmin_finds_a_minimal_failing_subset() -> None:
    from sim import ddmin

    calls = []

    def fails(items: list[int]) -> bool:
        calls.append(items)
        return 3 in items and 7 in items

    assert sorted(ddmin(list(range(20)), fails)) == [3, 7]
    assert ddmin([1, 2], lambda items: True) == []
    assert len(calls) < 60


def test_regression_a_slot_freed_before_the_waiting_task_starts_wakes_it() -> None:
    # Found by the sim (seed 249 of the tiny range, shrunk to these four faults): a guest
    # access that met a full ring handed "wait" to a new task, a resume freed the slots
    # before that task parked, and the wake-up found nobody: both vCPUs waited for ever.
    plan = Plan(
        frozenset({"balloon", "race", "ring_full"}),
        (
            SimFault(0.001071, "cut", {"direction": "to_server", "fraction": 0.783}),
            SimFault(0.011261, "cut", {"direction": "to_server", "fraction": 0.06}),
            SimFault(0.021804, "kill"),
            SimFault(0.028031, "crash", {"point": "after_write", "nth": 1}),
        ),
    )
    r = run_seed(249, scenario="tiny", plan=plan)
    assert r.ok, r.failures


def test_the_memory_check_sees_a_wrong_byte_and_a_lost_page() -> None:
    from guest import Shadow, page_bytes
    from hv import HvConfig, Hypervisor
    from sim.checks import memory_problems

    hv = Hypervisor(HvConfig(nr_gfns=8, vcpus=1))
    try:
        domain = hv.domains[1]
        shadow = Shadow(8, seed=1)
        shadow.wrote(3, 1)
        domain.pool.write(domain.p2m.frames[3], 0, page_bytes(1, 3, 1))
        assert memory_problems(domain, shadow, losses_allowed=False) == []
        domain.pool.write(domain.p2m.frames[3], 100, b"\xff")
        assert memory_problems(domain, shadow, losses_allowed=False) == [
            "gfn 3 holds wrong bytes (ram_rw)"
        ]
        shadow.lost(5)
        assert len(memory_problems(domain, shadow, losses_allowed=False)) == 2
        assert len(memory_problems(domain, shadow, losses_allowed=True)) == 1
    finally:
        hv.close()


def test_worker_processes_give_the_same_runs() -> None:
    one = run_seeds(range(4), scenario="tiny")
    two = run_seeds(range(4), scenario="tiny", jobs=2)
    assert one.to_dict()["fired"] == two.to_dict()["fired"]
    assert (one.passed, one.lives, one.ops) == (two.passed, two.lives, two.ops)


def test_a_component_that_blows_up_is_a_failed_run_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hv import Hypervisor

    def broken(self: Hypervisor) -> list[str]:
        raise RuntimeError("planted")

    monkeypatch.setattr(Hypervisor, "check", broken)
    r = run_seed(0, scenario="tiny", plan=Plan())
    assert not r.ok
    assert r.failures == ["the world crashed: RuntimeError('planted')"]


def test_no_threads_and_a_power_loss_really_loses_unsynced_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_threads(*_: object, **__: object) -> None:
        raise AssertionError("the sim must never wait on a thread")

    monkeypatch.setattr(trio.to_thread, "run_sync", no_threads)
    mid_batch = {"mode": "drop", "point": "after_write", "nth": 1}  # written, not synced
    plan = Plan(faults=(SimFault(0.01, "power", mid_batch), SimFault(0.05, "power", {})))
    r = run_seed(3, plan=plan, keep_trace=True)
    assert r.ok, r.failures
    assert r.trace is not None
    losses = [json.loads(line) for line in r.trace.lines if '"power_loss"' in line]
    assert len(losses) == 2
    assert losses[0]["lost"] > 0  # the batch's unsynced writes were there, and went
    assert not any("unsupported" in line for line in r.trace.lines)
