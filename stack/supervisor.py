"""The pager's supervisor: start it, restart it whenever it dies, record each life.

The supervisor is handed its spawner (a `procs.Child` in production, a stand-in in the
tests), so its restart rules run without processes: restart at once after a kill, back off
when a pager dies without attaching, give up after MAX_FAILED_STARTS, arm the next start
with a scheduled fault, and hold restarts while the gate is closed. The history stays
bounded however long the stack runs (lives.py): the latest lives in full, the older ones
folded into the counts the report gives (`life_counts`).
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import structlog
import trio

from .lives import LifeLog
from .schedule import Fault

log = structlog.get_logger("stack")

#: Consecutive pager starts that never attach before the stack gives up on the pager.
MAX_FAILED_STARTS: Final = 6

#: Why the end phase kills the pager (not a fault: the store check needs it dead).
FINAL_KILL: Final = "final_store_check"


class Spawner(Protocol):
    """What the supervisor starts and restarts: one process slot, one life at a time."""

    log_path: Path

    @property
    def pid(self) -> int | None: ...

    @property
    def running(self) -> bool: ...

    async def start(self, env: Mapping[str, str] | None = None) -> None: ...

    async def wait(self) -> int: ...

    def kill(self) -> None: ...


@dataclass
class PagerLife:
    """One pager incarnation."""

    n: int
    pid: int
    started: float
    spec: str | None = None
    fault_kind: str | None = None
    killed_by: str | None = None  # why the stack SIGKILLed it
    attached: bool = False
    rc: int | None = None
    ended: float | None = None

    @property
    def cause(self) -> str:
        """How this incarnation ended."""
        if self.rc is None:
            return "running"
        if self.killed_by:
            return f"sigkill:{self.killed_by}"
        if self.fault_kind == "crash" and self.rc == -signal.SIGKILL:
            return "crash_point"
        if self.rc == 0:
            return "exit:0"
        return f"exit:{self.rc}"


def life_counts(lives: Iterable[PagerLife], final_n: int) -> Counter[str]:
    """The report's counts over `lives` (`final_n`: the life asked to page everything in at
    the end); additive, so LifeLog folds old lives through it and adds the rest later."""
    c: Counter[str] = Counter()
    for life in lives:
        c["final_kills"] += life.killed_by == FINAL_KILL
        if life.rc is None:
            continue
        c[f"ends:{life.cause}"] += 1
        c["never_attached"] += not life.attached
        # Deaths during the run: every end except the end phase's own kill and SIGTERM.
        if life.killed_by != FINAL_KILL and life.n != final_n:
            c["mid_run"] += 1
            c["kills"] += bool(life.killed_by)
            c["crash_points"] += life.cause == "crash_point"
    return c


def _never() -> bool:
    return False


class PagerSupervisor:
    """Keeps one pager running through `spawner`; `lives` is the history of its starts."""

    def __init__(
        self,
        spawner: Spawner,
        elapsed: Callable[[], float],
        *,
        orphaned: Callable[[], bool] = _never,
    ) -> None:
        self.pager = spawner
        self.elapsed = elapsed  # seconds since the workload started, for the record
        self.orphaned = orphaned  # faithful Xen: no pager can attach to an orphaned ring
        self.lives: LifeLog[PagerLife] = LifeLog(self._fold)
        self.arm_next: Fault | None = None  # the fault the next start carries
        self.stopped = False  # no more restarts
        self.exited = trio.Event()  # set (and replaced) each time a life ends
        self.started = trio.Event()  # set (and replaced) each time a life starts
        self.restart_gate = trio.Event()  # cleared while the end phase reads the store
        self.restart_gate.set()
        self.final_n = 0  # the incarnation asked to page everything in at the end

    def _fold(self, lives: Iterable[PagerLife]) -> Counter[str]:
        return life_counts(lives, self.final_n)

    async def run(self) -> None:
        """Start the pager, restart it whenever it dies (until told to stop)."""
        failed_starts = 0
        backoff = 0.05
        while not self.stopped:
            await self.restart_gate.wait()
            if self.stopped:
                return
            fault, self.arm_next = self.arm_next, None
            env = {"XPEMU_FAULTS": fault.spec or ""} if fault else {"XPEMU_FAULTS": ""}
            await self.pager.start(env)
            assert self.pager.pid is not None
            life = PagerLife(
                len(self.lives) + 1,
                self.pager.pid,
                round(self.elapsed(), 3),
                spec=fault.spec if fault else None,
                fault_kind=fault.kind if fault else None,
            )
            self.lives.append(life)
            self.started.set()
            self.started = trio.Event()
            rc = await self.pager.wait()
            life.rc, life.ended = rc, round(self.elapsed(), 3)
            self.exited.set()
            self.exited = trio.Event()
            log.info("stack.pager_exited", n=life.n, pid=life.pid, rc=rc, cause=life.cause)
            if self.stopped:
                return
            if self.orphaned():
                self.stopped = True
                return
            # A life the schedule killed before it could attach (a slow start on a loaded
            # machine) did not fail to start: only deaths of the pager's own count.
            failed_starts = 0 if life.attached or life.killed_by else failed_starts + 1
            if failed_starts >= MAX_FAILED_STARTS:
                self.stopped = True
                return
            backoff = 0.05 if life.attached or life.killed_by else min(backoff * 2, 1.0)
            await trio.sleep(backoff)

    def note_attached(self) -> None:
        """hv reports a new attach epoch: the running life attached."""
        if self.lives and self.lives[-1].rc is None:
            self.lives[-1].attached = True

    def kill(self, why: str) -> bool:
        """SIGKILL the running pager, recording why; False if none was running."""
        if not self.pager.running or not self.lives:
            return False
        self.lives[-1].killed_by = why
        self.pager.kill()
        return True

    async def wait_down(self) -> None:
        """Wait until the latest life has been reaped (callers bound the wait)."""
        life = self.lives[-1]
        while life.rc is None:
            await self.exited.wait()

    @property
    def restarts(self) -> int:
        """Starts after the first one."""
        return max(0, len(self.lives) - 1)
