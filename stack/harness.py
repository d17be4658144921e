"""Run hv, pager and guest as three OS processes, inject faults, check everything at the end.

`xpemu up` is this harness with an empty fault schedule; `xpemu stress` gives it one. The
harness starts hv, polls its status, keeps a pager running (supervisor.py), starts the
guest, plays the schedule, then runs the end checks (endcheck.py) and builds the report
(report.py); the live view is live.py, the run directory and command lines rundir.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import structlog
import trio

from protocol import ProtocolError
from transport import Client, ConnectionClosed, open_unix_client

from .endcheck import EndPhase, load_guest_report
from .errors import StackError, decisive, hv_death
from .live import LiveFacts, display
from .lives import LifeLog
from .options import StackOptions
from .power import POWER_KINDS, PowerControl, open_power
from .procs import Child, ChildSet, StartError, last_line, open_children
from .proxy import FaultProxy
from .report import FINAL_KILL, RunFacts, build_report, summary_text
from .rundir import guest_argv, hv_argv, pager_argv, prepare_run_dir
from .supervisor import MAX_FAILED_STARTS, PagerLife, PagerSupervisor
from .timeline import log_sample

# Names other modules and tests import from here.
__all__ = [
    "FINAL_KILL",
    "MAX_FAILED_STARTS",
    "PagerLife",
    "Stack",
    "StackError",
    "StackOptions",
    "prepare_run_dir",
    "run_stack",
    "summary_text",
]

log = structlog.get_logger("stack")

#: Seconds between status polls (live view, attach detection, orphan detection).
POLL_EVERY: Final = 0.25


class Stack:
    """One run of the three processes; `run()` returns the report dict."""

    def __init__(self, opts: StackOptions, out: Callable[[str], None]) -> None:
        self.o = opts
        self.out = out
        self.run_dir = Path()
        self.t0 = 0.0
        self.status: dict[str, Any] | None = None
        self.counters: dict[str, int] = {}
        self.vcpu_stats: dict[str, Any] = {}  # hv's per-vCPU pauses and round trips (domain 1)
        self.control: Client | None = None
        self.hv: Child | None = None
        self.pager: Child | None = None
        self.guest: Child | None = None
        self.sup: PagerSupervisor | None = None
        self.attach_event = trio.Event()
        self.last_epoch = 0
        self.orphaned = False
        self.orphan_note: str | None = None
        self.violations: list[str] = []
        self.injected: Counter[str] = Counter()
        self.fault_log: list[dict[str, Any]] = []
        self.proxy: FaultProxy | None = None
        self.power: PowerControl | None = None  # power.py: the lazy FS, for power/lie faults
        self.guest_progress: dict[str, Any] = {}
        self._guest_log_pos = 0
        self.stop_requested = trio.Event()
        self.phase = "starting"
        self.report: dict[str, Any] = {}

    def elapsed(self) -> float:
        """Seconds since the workload started."""
        return trio.current_time() - self.t0

    @property
    def lives(self) -> list[PagerLife] | LifeLog[PagerLife]:
        """The pager's incarnations so far (the latest ones: lives.py)."""
        return self.sup.lives if self.sup is not None else []

    @property
    def pager_stop(self) -> bool:
        """True once no pager will be restarted."""
        return self.sup is not None and self.sup.stopped

    # ---- the run --------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Start everything, run, check, stop; the report (raises StackError on start-up)."""
        self.run_dir = prepare_run_dir(self.o.run_dir, use_proxy=self.o.use_proxy)
        started = time.monotonic()
        self.t0 = trio.current_time()
        async with (
            # power.py: mounted before any child starts, unmounted after all are reaped.
            open_power(self.run_dir, self.o.schedule, self.o.start_timeout) as self.power,
            open_children(self.run_dir) as children,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(self._signals, nursery.cancel_scope)
            await self._start_hv(children)
            async with open_unix_client(str(self.run_dir / "privcmd.sock"), "control") as ctl:
                await ctl.hello()
                self.control = ctl
                nursery.start_soon(self._poller)
                if self.o.use_proxy:
                    self.proxy = FaultProxy(str(self.run_dir / "privcmd.sock"))
                    await nursery.start(
                        self.proxy.serve, str(self.run_dir / "pager-net/privcmd.sock")
                    )
                self.pager = children.add("pager", pager_argv(self.o, self.run_dir))
                self.sup = PagerSupervisor(self.pager, self.elapsed, orphaned=self._is_orphaned)
                nursery.start_soon(self.sup.run)
                await self._wait_first_attach()
                if self.stop_requested.is_set():
                    raise StackError("interrupted during start-up; every child stopped")
                self.guest = children.add("guest", guest_argv(self.o, self.run_dir))
                await self.guest.start()
                self.t0 = trio.current_time()
                self.phase = "workload"
                live = self.o.live if self.o.live is not None else sys.stdout.isatty()
                nursery.start_soon(display, self._live_facts, live, self.out)
                async with trio.open_nursery() as faults:
                    faults.start_soon(self._faults)
                    guest_rc = await self._wait_guest()
                    faults.cancel_scope.cancel()
                if self.proxy is not None and self.proxy.disarm():
                    self.fault_log.append({"at": round(self.elapsed(), 3), "event": "cut disarmed"})
                await self._end_phase(guest_rc)
                nursery.cancel_scope.cancel()
        self.report["elapsed_s"] = round(time.monotonic() - started, 2)
        return self.report

    async def _signals(self, scope: trio.CancelScope) -> None:
        """First Ctrl-C/SIGTERM: stop the guest and finish cleanly; second: tear down now."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self.stop_requested.is_set():
                    log.warning("stack.abort", signal=signal.Signals(signum).name)
                    self.report["aborted"] = "interrupted twice"
                    scope.cancel()
                    raise KeyboardInterrupt
                log.info("stack.stop_requested", signal=signal.Signals(signum).name)
                self.out(
                    "stopping: finishing the guest, paging in, checking (Ctrl-C again to abort)"
                )
                self.stop_requested.set()
                if self.guest is not None:
                    self.guest.send_signal(signal.SIGTERM)

    async def _start_hv(self, children: ChildSet) -> None:
        o = self.o
        hv = self.hv = children.add("hv", hv_argv(o, self.run_dir))
        await hv.start()
        sockets = [self.run_dir / "privcmd.sock", self.run_dir / "guest.sock"]
        with trio.move_on_after(o.start_timeout) as waited:
            while True:
                if not hv.running:
                    rc = await hv.wait()
                    raise StackError(
                        f"hv exited with status {rc} during start-up: "
                        f"{last_line(hv.log_path) or 'no output'} (log: {hv.log_path})"
                    )
                if self.stop_requested.is_set():
                    raise StackError("interrupted during start-up; every child stopped")
                if all(s.exists() for s in sockets) and await self._hello_ok(sockets[0]):
                    break
                await trio.sleep(0.05)
        if waited.cancelled_caught:
            raise StackError(
                f"hv did not become ready within {o.start_timeout:g} s (log: {hv.log_path})"
            )
        log.info("stack.hv_ready", pid=hv.pid)

    async def _hello_ok(self, path: Path) -> bool:
        try:
            async with open_unix_client(str(path), "control") as c:
                await c.hello()
                return True
        except (OSError, ConnectionClosed, ProtocolError):
            return False

    # ---- status polling ---------------------------------------------------------------

    async def _poller(self) -> None:
        """Poll hv's status and counters: the live view, attach and orphan detection."""
        assert self.control is not None
        while True:
            try:
                self.status = await self.control.call("status")
                counters = await self.control.call("counters")
            except (ConnectionClosed, ProtocolError) as exc:
                self.violations.append(f"hv: control connection lost: {exc}")
                log.error("stack.hv_lost", error=str(exc))
                if self.sup is not None:
                    self.sup.stopped = True
                self.stop_requested.set()
                if self.guest is not None:
                    self.guest.kill()
                return
            for d in counters["domains"]:
                if d["domid"] == 1:
                    self.counters = d["counters"]
                    self.vcpu_stats = {k: v for k, v in d.items() if k != "counters"}
            dom = self._dom()
            if dom is not None:
                log_sample(log, dom, self.counters, self.elapsed())
                pager = dom["pager"]
                if pager["attached"] and pager["epoch"] > self.last_epoch:
                    self.last_epoch = pager["epoch"]
                    if self.sup is not None:
                        self.sup.note_attached()
                    self.attach_event.set()
                    self.attach_event = trio.Event()
                if pager["orphaned"] and not self.orphaned:
                    self.orphaned = True
                    self.orphan_note = (
                        "ring orphaned after an abrupt pager loss (xen mode): new pagers are "
                        "refused with EBUSY and vCPUs touching paged memory stay paused"
                    )
                    log.error("stack.ring_orphaned", paged=dom["paged_pages"])
            self._read_guest_progress()
            await trio.sleep(POLL_EVERY)

    def _dom(self) -> dict[str, Any] | None:
        if not self.status:
            return None
        for d in self.status["domains"]:
            if d["domid"] == 1:
                dom: dict[str, Any] = d
                return dom
        return None

    def _is_orphaned(self) -> bool:
        return self.orphaned

    def _read_guest_progress(self) -> None:
        """The guest's latest `guest.progress` line from its log (it logs one a second)."""
        if self.guest is None:
            return
        try:
            with open(self.guest.log_path, "rb") as f:
                if os.fstat(f.fileno()).st_size < self._guest_log_pos:
                    self._guest_log_pos = 0  # the guest rotated its log: a new file
                f.seek(self._guest_log_pos)
                chunk = f.read()
        except OSError:
            return
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        self._guest_log_pos += end + 1
        for line in reversed(chunk[:end].splitlines()):
            if b'"guest.progress"' in line:
                with contextlib.suppress(ValueError):
                    self.guest_progress = json.loads(line)
                break

    def _live_facts(self) -> LiveFacts:
        return LiveFacts(
            command=self.o.command,
            phase=self.phase,
            elapsed=self.elapsed(),
            dom=self._dom() or {},
            counters=self.counters,
            guest=self.guest_progress,
            restarts=self.sup.restarts if self.sup is not None else 0,
            injected=dict(self.injected),
            scheduled=len(self.o.schedule),
            orphan_note=self.orphan_note,
        )

    # ---- the pager --------------------------------------------------------------------

    async def _wait_first_attach(self) -> None:
        """Bounded wait for the first pager to attach; StackError naming why it did not."""
        with trio.move_on_after(self.o.start_timeout):
            while self.last_epoch == 0:
                if self.pager_stop or self.stop_requested.is_set():
                    break
                with trio.move_on_after(0.25):
                    await self.attach_event.wait()
        if self.stop_requested.is_set():
            raise StackError("interrupted during start-up; every child stopped")
        if self.last_epoch == 0:
            assert self.pager is not None
            exits = [life.rc for life in self.lives if life.rc is not None]
            said = last_line(self.pager.log_path) or "no output"
            why = (
                f"exited {len(exits)} times, last status {exits[-1]}" if exits else "still running"
            )
            raise StackError(
                f"pager did not attach within {self.o.start_timeout:g} s ({why}): {said} "
                f"(log: {self.pager.log_path})"
            )

    # ---- faults -------------------------------------------------------------------------

    async def _faults(self) -> None:
        """Play the schedule: each fault at its instant (seconds from the workload start)."""
        assert self.sup is not None
        sup = self.sup
        last_hit_unattached = False  # the last pager-killing fault hit a restarting pager
        for fault in self.o.schedule:
            await trio.sleep_until(self.t0 + fault.at)
            kills = fault.kind not in ("cut", "lie")  # the rest take the pager down
            waited = await self._hold_for_pager(last_hit_unattached) if kills else 0.0
            entry: dict[str, Any] = {"at": round(self.elapsed(), 3), **fault.to_dict()}
            entry["at"], entry["planned_at"] = round(self.elapsed(), 3), fault.at
            if waited >= 0.001:
                entry["held_s"] = round(waited, 3)
            if kills:
                last_hit_unattached = not (sup.lives and sup.lives[-1].attached)
            if self.orphaned or sup.stopped:
                entry["outcome"] = "skipped: no pager can attach"
            elif fault.kind == "kill":
                entry["outcome"] = "killed" if sup.kill("kill") else "skipped: no pager"
            elif fault.kind in ("crash", "store"):
                # Restart the pager armed with this fault (the restart is a SIGKILL too).
                sup.arm_next = fault
                killed = sup.kill(f"arm_{fault.kind}")
                entry["outcome"] = f"restart armed {fault.spec}" + ("" if killed else " (was down)")
            elif fault.kind in POWER_KINDS:  # power.py: power cuts and a lying disk
                assert self.power is not None
                entry["outcome"] = await self.power.inject(fault, sup, round(self.elapsed(), 3))
            elif fault.kind == "cut":
                assert self.proxy is not None
                self.proxy.arm_cut(fault.params["direction"], fault.params["fraction"])
                entry["outcome"] = "cut armed"
            self.injected[fault.kind] += 1
            self.fault_log.append(entry)
            log.info(
                "stack.fault", **{k: v for k, v in entry.items() if k != "kind"}, fault=fault.kind
            )

    async def _hold_for_pager(self, need_attach: bool) -> float:
        """Hold a pager-killing fault until it has a pager worth killing; seconds held.

        A schedule's faults are spaced for a pager that restarts in well under their
        spacing. On a slow or loaded machine a restart can take longer, and kill after
        kill would land before any pager attaches: the vCPUs would wait through the whole
        storm and count as stuck, a verdict on the machine's speed. So a fault waits
        (at most `start_timeout`) for the pager it is to kill to have started, and, when
        the last one hit a pager still restarting, for it to have attached: one kill in a
        row may land during recovery, which is under test too, but not two.
        """
        sup = self.sup
        assert sup is not None
        started = trio.current_time()
        with trio.move_on_after(self.o.start_timeout):
            while not (self.orphaned or sup.stopped or self.stop_requested.is_set()):
                life = sup.lives[-1] if sup.lives else None
                if life is None or life.killed_by is not None or life.rc is not None:
                    with trio.move_on_after(POLL_EVERY):
                        await sup.started.wait()  # the killed one is not yet replaced
                elif need_attach and not life.attached:
                    with trio.move_on_after(POLL_EVERY):
                        await self.attach_event.wait()
                else:
                    break
        return trio.current_time() - started

    # ---- the guest ------------------------------------------------------------------

    async def _wait_guest(self) -> int:
        """Wait for the guest to finish; bounded, so a wedged guest cannot hang the stack."""
        assert self.guest is not None
        o = self.o
        if o.guest_duration is None:
            await self.stop_requested.wait()
            bound = 3 * o.stuck_after + 60.0
        else:
            bound = o.guest_duration + 3 * o.stuck_after + 60.0
        with trio.move_on_after(bound):
            return await self.guest.wait()
        self.violations.append(f"guest did not finish within {bound:g} s: killed")
        self.guest.kill()
        return await self.guest.wait()

    # ---- the end --------------------------------------------------------------------------

    async def _end_phase(self, guest_rc: int) -> None:
        self.phase = "checking"
        assert self.control is not None and self.pager is not None and self.sup is not None
        guest_report = load_guest_report(self.run_dir, guest_rc, self.violations)
        dom = self._dom()
        if self.orphaned or bool(dom and dom["pager"]["orphaned"]):
            self.orphaned = True
        end = EndPhase(self.o, self.run_dir, self.control, self.sup, self.pager, self.violations)
        result = await end.run(orphaned=self.orphaned)
        self.phase = "done"
        self.report = build_report(
            RunFacts(
                opts=self.o,
                run_dir=self.run_dir,
                lives=self.sup.lives,
                final_n=self.sup.final_n,
                counters=self.counters,
                last_epoch=self.last_epoch,
                guest=guest_report,
                guest_rc=guest_rc,
                check=result.check,
                dom=result.dom,
                store_mid=result.store_mid.to_dict() if result.store_mid else None,
                store_end=result.store_end.to_dict() if result.store_end else None,
                final=result.final,
                paged_in=result.paged_in,
                lost_by_pager=result.lost_by_pager,
                violations=self.violations,
                injected=dict(self.injected),
                fault_log=self.fault_log,
                cuts_fired=len(self.proxy.cuts) if self.proxy else 0,
                orphaned=self.orphaned,
                orphan_note=self.orphan_note,
                power=self.power.report() if self.power is not None else None,  # power.py
                vcpu_stats=self.vcpu_stats,
            )
        )


async def run_stack(opts: StackOptions, out: Callable[[str], None]) -> dict[str, Any]:
    """Run the stack once; the report. StackError for a one-line start-up failure."""
    stack = Stack(opts, out)
    try:
        return await stack.run()
    except BaseExceptionGroup as group:
        raise hv_death(stack.hv, decisive(group)) from None
    except StartError as exc:
        raise StackError(str(exc)) from None
