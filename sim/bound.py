"""The bound on one simulated run: a scheduler-step budget and a simulated-time limit.

Neither is wall clock, so a run's verdict stays a function of its seed. A livelock (tasks
that keep each other runnable, so the mock clock never jumps) exhausts the step budget; a
deadlock or a wait that never ends reaches the time limit (the bound's own timer is what
lets the clock jump there). Either way the run is cancelled and its verdict is "stuck",
naming what was still waiting: the busiest tasks of the last steps, the tasks still alive,
and whatever the world adds (its paused vCPUs, say).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Final

import trio

#: Steps counted per task name before the budget runs out (to name the spinning tasks).
TAIL: Final = 2_000


def step_budget(ops: int) -> int:
    """The scheduler steps a run of `ops` guest operations may take: a passing run takes
    about 15-30 per op (`small`: at most ~8,400 for 300 ops), so this leaves room tenfold
    and more, yet ends a livelock within seconds."""
    return 100_000 + 200 * ops


def _name(task: trio.lowlevel.Task) -> str:
    return task.name.replace(".<locals>", "")


def live_tasks() -> Counter[str]:
    """Every task of the current trio run, by name (the root's own machinery left out)."""
    out: Counter[str] = Counter()
    root = trio.lowlevel.current_root_task()
    todo = [root] if root is not None else []  # None only outside a run
    while todo:
        task = todo.pop()
        out[_name(task)] += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    for name in ("<init>", "<TrioToken.run_sync_soon task>", _name_of(RunBound.watch_time)):
        out.pop(name, None)
    return out


def _name_of(fn: Callable[..., object]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


class RunBound(trio.abc.Instrument):
    """Counts scheduler steps (as a trio instrument) and watches simulated time; at either
    limit it describes what was still waiting and cancels `scope` (the whole run)."""

    def __init__(
        self,
        *,
        max_steps: int,
        time_limit: float,
        describe: Callable[[], str] = lambda: "",
    ) -> None:
        self.max_steps = max_steps
        self.time_limit = time_limit
        self.describe = describe
        self.scope = trio.CancelScope()
        self.steps = 0
        self.busiest: Counter[str] = Counter()
        self.stuck: str | None = None  # why the run was ended, with what was waiting
        self._per_step = False  # counting in `before_task_step` (near the budget)

    def count_batch(self, n: int) -> None:
        """Count the `n` steps of one pass of trio's run loop before they run (the sim's
        scheduler calls this, `sim.world.seeded_scheduler`): one call per pass instead of
        an instrument call per step. Near the budget the bound counts step by step, as an
        instrument added here, to name the busiest tasks of the last steps. (A bound given
        to `trio.run` as an instrument counts every step itself: do not also call this.)"""
        if self._per_step:
            return
        if self.steps + n <= self.max_steps - TAIL:
            self.steps += n
            return
        self._per_step = True
        trio.lowlevel.add_instrument(self)  # before the pass runs: counts its steps too

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        """Count a step; at the budget, end the run."""
        self.steps += 1
        if self.steps <= self.max_steps - TAIL or self.stuck is not None:
            return
        self.busiest[_name(task)] += 1
        if self.steps > self.max_steps:
            share = ", ".join(
                f"{name} ({n * 100 // TAIL}%)" for name, n in self.busiest.most_common(3)
            )
            self.trip(
                f"{self.max_steps:,} scheduler steps without the run ending "
                f"(a livelock?); busiest tasks of the last {TAIL:,}: {share}"
            )

    async def watch_time(self) -> None:
        """End the run `time_limit` simulated seconds from now (run this in a nursery that
        the run cancels when it ends)."""
        await trio.sleep(self.time_limit)
        self.trip(f"{self.time_limit:g} simulated seconds without the run ending")

    def trip(self, reason: str) -> None:
        """End the run now, saying why and what was still waiting."""
        if self.stuck is not None:
            return
        tasks = ", ".join(
            f"{name}" + (f" x{n}" if n > 1 else "") for name, n in sorted(live_tasks().items())
        )
        extra = self.describe()
        self.stuck = (
            f"stuck at t={trio.current_time():.6f} s: {reason}"
            + (f"; {extra}" if extra else "")
            + f"; tasks still waiting: {tasks}"
        )
        self.scope.cancel()


__all__ = ["RunBound", "live_tasks", "step_budget"]
