"""No seed hangs: a livelock or a wait that never ends makes a run "stuck", exit 1."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pager.balance import Balancer
from sim import run_seed
from sim.bound import RunBound, step_budget
from sim.clock import SimClock
from sim.world import seeded_scheduler
from stack.cli import main


def plant_livelock(mp: pytest.MonkeyPatch) -> None:
    """A balancer step that does nothing yet says it did (sim seed 341's bug, in general):
    the balancer loops without awaiting anything that takes time."""

    async def once(self: Balancer) -> bool:
        return True  # BUG: no step was taken

    mp.setattr(Balancer, "once", once)


def test_a_planted_livelock_ends_the_run_stuck(monkeypatch: pytest.MonkeyPatch) -> None:
    plant_livelock(monkeypatch)
    result = run_seed(3, scenario="tiny")
    assert not result.ok and result.stuck
    why = result.failures[0]
    assert why.startswith("stuck at t=")
    assert f"{step_budget(60):,} scheduler steps" in why
    assert "busiest tasks" in why and "pager.core.Pager._balance_then_drain" in why
    assert "paused vCPUs [" in why and "tasks still waiting:" in why
    # Deterministic: the same seed is stuck at the same step with the same trace.
    again = run_seed(3, scenario="tiny")
    assert again.failures == result.failures and again.trace_hash == result.trace_hash
    monkeypatch.undo()
    assert run_seed(3, scenario="tiny").ok


def test_a_stuck_seed_exits_1_with_its_replay(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plant_livelock(monkeypatch)
    code = main(["sim", "--seed", "3", "--scenario", "tiny"])
    out = capsys.readouterr().out
    assert code == 1
    assert "seed 3 (tiny): STUCK" in out
    assert "replay: xpemu sim --seed 3 --scenario tiny" in out


def test_the_time_limit_names_what_still_waits() -> None:
    """A wait that never ends (here a task on an event nobody sets): the bound's timer
    lets the mock clock jump to the limit, and the verdict names the waiting task."""
    bound = RunBound(max_steps=10_000, time_limit=30.0, describe=lambda: "vCPU 1 paused")

    async def waits_for_ever(never: trio.Event) -> None:
        await never.wait()

    async def world() -> None:
        with bound.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bound.watch_time)
                nursery.start_soon(waits_for_ever, trio.Event())

    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(world, clock=clock, instruments=[bound])
    assert bound.stuck is not None
    assert bound.stuck.startswith("stuck at t=30.000000 s: 30 simulated seconds")
    assert "vCPU 1 paused" in bound.stuck
    assert "waits_for_ever" in bound.stuck


def test_the_step_budget_counts_steps_not_time() -> None:
    """Two tasks that keep each other runnable never let the clock move; the budget ends
    them after exactly its number of steps."""
    bound = RunBound(max_steps=5_000, time_limit=1e9)

    async def spin() -> None:
        while True:
            await trio.lowlevel.checkpoint()

    async def world() -> None:
        with bound.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bound.watch_time)
                nursery.start_soon(spin)
                nursery.start_soon(spin)

    trio.run(world, clock=trio.testing.MockClock(autojump_threshold=0), instruments=[bound])
    assert bound.stuck is not None and "5,000 scheduler steps" in bound.stuck
    assert "spin (" in bound.stuck  # the busiest tasks, by share
    assert 5_000 < bound.steps < 5_100  # and the unwinding took a few more


def _spin_run(bound: RunBound, *, per_pass: bool) -> None:
    """Three tasks spinning (batches of several steps a pass) under the sim's seeded
    scheduler, the bound fed a pass at a time or as an instrument."""

    async def spin(n: int) -> None:
        while True:
            for _ in range(n):
                await trio.lowlevel.checkpoint()
            await trio.sleep(0.001)  # passes of one, two and three steps

    async def world() -> None:
        with bound.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bound.watch_time)
                for n in (1, 2, 3):
                    nursery.start_soon(spin, n)

    with seeded_scheduler(7) as sched:
        if per_pass:
            sched.on_batch = bound.count_batch
        trio.run(world, clock=SimClock(), instruments=[] if per_pass else [bound])


@pytest.mark.parametrize("max_steps", [5_000, 5_001, 7_777])
def test_steps_counted_a_pass_at_a_time_are_the_instruments_count(max_steps: int) -> None:
    """The sim counts steps from the sizes of the batches trio shuffles (no instrument
    call per step) and per step only near the budget: the same verdict, at the same step,
    with the same busiest tasks, as a bound counting every step."""
    per_step = RunBound(max_steps=max_steps, time_limit=1e9)
    _spin_run(per_step, per_pass=False)
    per_pass = RunBound(max_steps=max_steps, time_limit=1e9)
    _spin_run(per_pass, per_pass=True)
    assert per_step.stuck is not None and f"{max_steps:,} scheduler steps" in per_step.stuck
    assert per_pass.stuck == per_step.stuck
    assert per_pass.steps == per_step.steps
    assert per_pass.busiest == per_step.busiest
