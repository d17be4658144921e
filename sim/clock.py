"""The sim's clock: trio time that jumps to the next wake-up whenever nothing can run.

`SimClock` does what `trio.testing.MockClock(autojump_threshold=0)` does for a run, more
cheaply, and adds timers that are not cancel scopes:

- **Time** is a number the clock holds (0.0 at the start, as MockClock's); reading it
  reads no real clock (MockClock reads one on every `current_time()`, with rate 0).
- **Autojump**: trio asks a clock how long to sleep only when no task can run
  (`deadline_to_sleep_time`, given the earliest cancel-scope deadline). The clock then
  moves its time to the earliest wake-up, its own timers' or trio's deadline, wakes the
  timers due and says "sleep 0": trio expires its due deadlines in the same pass of its
  run loop. MockClock takes two passes per jump (a poll to find the run idle, then one
  to expire), this takes one.
- **Timers** (`wait_until`): a task waits until a simulated instant on a heap here, parked
  with `wait_task_rescheduled`, instead of `trio.sleep_until`'s cancel scope (enter,
  deadline registered, `Cancelled` raised into the task and caught, exit): the links'
  readers (`sim.net`) wait for each frame in flight this way, tens of thousands of times
  per default seed. A cancelled timer's entry is dropped; it is a checkpoint as a sleep is.

Deterministic as MockClock is: no wall clock, time moves only when the run is idle, and
the tasks woken in one pass (timers and deadlines alike) go through trio's seeded shuffle
together. A run with no timer and no deadline left is a deadlock: trio then waits for
I/O that never comes (`RunBound`'s own deadline is always there in a sim run).
`trio.testing.wait_all_tasks_blocked` does not mix with it: the clock jumps before an idle
waiter is woken (MockClock wakes the waiter first); nothing in the sim's world uses it.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import trio


class SimClock(trio.abc.Clock):
    """Simulated trio time with autojump and cheap timers (see the module)."""

    def __init__(self) -> None:
        self._now = 0.0
        # Entries are [at, sequence, task or None once cancelled]; sequence keeps the
        # order of equal instants (and never compares tasks).
        self._timers: list[list[Any]] = []
        self._seq = 0

    def start_clock(self) -> None:
        """Time starts at 0; trio's I/O polls are thinned (`_FewerPolls`)."""
        runner = trio._core._run.GLOBAL_RUN_CONTEXT.runner  # the run starting (trio calls this)
        runner.io_manager = _FewerPolls(runner.io_manager)  # type: ignore[assignment]

    def current_time(self) -> float:
        """The simulated time now."""
        return self._now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        """Called by trio's run loop when no task can run: jump to the earliest wake-up
        (a timer here or trio's `deadline`), wake the timers due, and sleep 0."""
        timers = self._timers
        while timers and timers[0][2] is None:
            heapq.heappop(timers)
        at = timers[0][0] if timers and timers[0][0] < deadline else deadline
        if at == math.inf:
            return math.inf
        if at > self._now:
            self._now = at
        while timers and timers[0][0] <= at:
            entry = heapq.heappop(timers)
            task, entry[2] = entry[2], None  # fired (or cancelled): None either way
            if task is not None:
                trio.lowlevel.reschedule(task)
        return 0.0

    def wake_at(self, task: trio.lowlevel.Task, at: float) -> list[Any]:
        """Reschedule `task`, which waits in `wait_task_rescheduled`, at simulated time
        `at` (after now); its entry, whose third item is None once it has fired. Whoever
        parked the task cancels it on abort by setting that item to None."""
        entry = [at, self._seq, task]
        self._seq += 1
        heapq.heappush(self._timers, entry)
        return entry

    async def wait_until(self, at: float) -> None:
        """Sleep until simulated time `at` (a checkpoint; cancellable)."""
        if at <= self._now:
            await trio.lowlevel.checkpoint()
            return
        entry = self.wake_at(trio.lowlevel.current_task(), at)

        def abort(_: Any) -> trio.lowlevel.Abort:
            entry[2] = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


class _FewerPolls:
    """trio's I/O manager, polled for ready file descriptors on one "no wait" pass of the
    run loop in `POLL_EVERY` (every pass polls: epoll with timeout 0, a system call and
    its wrapper, a few percent of a sim seed's CPU). Nothing in a sim run does I/O: the
    only file descriptor is trio's own wake-up socket (signals, `run_sync_soon` from
    another thread), which is then read a few passes later. A pass that may wait (nothing
    can run, no timer: a deadlock) polls as trio does. Anything else goes to the manager."""

    def __init__(self, io: Any) -> None:
        self._io = io
        self._poll = io.get_events
        self.process_events = io.process_events
        self._passes = 0

    def get_events(self, timeout: float) -> Any:
        if timeout == 0:
            self._passes += 1
            if self._passes % POLL_EVERY:
                return ()
        return self._poll(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._io, name)


#: One "no wait" pass of trio's run loop in this many polls for I/O in a sim run.
POLL_EVERY = 64


async def sleep_until(at: float) -> None:
    """`SimClock.wait_until` under a `SimClock`, `trio.sleep_until` under any other."""
    clock = trio.lowlevel.current_clock()
    if type(clock) is SimClock:
        await clock.wait_until(at)
    else:
        await trio.sleep_until(at)


__all__ = ["SimClock", "sleep_until"]
