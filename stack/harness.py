"""Run hv, pager and guest as three OS processes, inject faults, check everything at the end.

`xpemu up` is this harness with an empty fault schedule; `xpemu stress` gives it one. The
end of every run is the same: the guest finishes (its own final pass reads every gfn back),
the pager is killed once more so the store can be checked against hv's `audit` (invariant
4), a fresh pager recovers and then pages everything in on SIGTERM, the stack verifies every
gfn again through `guest.sock` (now all resident), checks the store holds no row for a
resident gfn, and asks hv to `check` its invariants.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
import trio

from guest import Shadow, verify_all
from protocol import MAX_AUDIT_COUNT, OpError, ProtocolError, RingMode
from transport import Client, ConnectionClosed, open_unix_client

from .lives import LifeLog
from .procs import Child, ChildSet, StartError, last_line, open_children
from .proxy import FaultProxy
from .schedule import Fault, schedule_to_list
from .store_check import StoreCheck, check_store

log = structlog.get_logger("stack")

#: Seconds between status polls (live view, attach detection, orphan detection).
POLL_EVERY: Final = 0.25

#: Longest Unix socket path (sun_path is 108 bytes with the terminating NUL).
MAX_SOCKET_PATH: Final = 107

#: Why the end phase kills the pager (not a fault: the store check needs it dead).
FINAL_KILL: Final = "final_store_check"

#: Consecutive pager starts that never attach before the stack gives up on the pager.
MAX_FAILED_STARTS: Final = 6


class StackError(Exception):
    """A one-line reason the stack cannot run (bad input, a child that will not start)."""


def prepare_run_dir(run_dir: Path | None, *, use_proxy: bool) -> Path:
    """Create (or reuse) the run directory and check it is usable; StackError if not."""
    try:
        if run_dir is None:
            path = Path(tempfile.mkdtemp(prefix="xpemu-"))
        else:
            path = Path(run_dir).absolute()
            path.mkdir(parents=True, exist_ok=True)
        probe = path / ".xpemu-probe"
        probe.write_bytes(b"")
        probe.unlink()
        (path / "state").mkdir(exist_ok=True)
        if use_proxy:
            (path / "pager-net").mkdir(exist_ok=True)
    except OSError as exc:
        where = run_dir if run_dir is not None else tempfile.gettempdir()
        raise StackError(f"run directory {where} is not writable: {exc.strerror}") from None
    longest = path / ("pager-net/privcmd.sock" if use_proxy else "privcmd.sock")
    if len(os.fsencode(longest)) > MAX_SOCKET_PATH:
        raise StackError(f"run directory path too long for a Unix socket: {path}")
    for name in ("guest-report.json", "guest.shadow"):
        with contextlib.suppress(FileNotFoundError):
            (path / name).unlink()
    return path


@dataclass
class StackOptions:
    """Everything `xpemu up` and `xpemu stress` take."""

    command: str = "up"
    run_dir: Path | None = None
    duration: float | None = 30.0  # None: until Ctrl-C
    nr_gfns: int = 4096
    target: int | None = None  # None: half of nr_gfns
    vcpus: int = 4
    host_frames: int | None = None
    ring_size: int = 64
    ring_mode: str = RingMode.reattach.value
    pattern: str = "hotset"
    write_ratio: float = 0.3
    seed: int = 0
    policy: str | None = None
    schedule: list[Fault] = field(default_factory=list)
    stuck_after: float = 10.0
    fault_ms: float = 2.0
    balloon_every: float = 1.0
    live: bool | None = None  # None: rich on a terminal, plain lines otherwise
    report: Path | None = None
    hv_cmd: list[str] = field(default_factory=lambda: [sys.executable, "-m", "hv"])
    pager_cmd: list[str] = field(default_factory=lambda: [sys.executable, "-m", "pager"])
    guest_cmd: list[str] = field(default_factory=lambda: [sys.executable, "-m", "guest"])
    start_timeout: float = 15.0  # hv ready, pager attached
    end_timeout: float = 60.0  # page everything in at the end
    use_proxy: bool = False  # route the pager through the fault proxy

    @property
    def effective_target(self) -> int:
        """The domain's target: smaller than the guest, so paging really happens."""
        return self.nr_gfns // 2 if self.target is None else self.target

    @property
    def guest_duration(self) -> float | None:
        """Seconds of guest workload: the run's duration minus start-up and the end checks."""
        if self.duration is None:
            return None
        return max(1.0, self.duration - self.end_reserve)

    @property
    def end_reserve(self) -> float:
        """Seconds kept for start-up and the end phase, so `--duration` bounds the run."""
        if self.duration is None:
            return 0.0
        # Measured: ~1.5 s start-up, then the guest's own verify pass and the end phase
        # (store check, restart, page everything in, verify again) take ~15-35 % of a run.
        return min(max(5.0, 0.35 * self.duration), 14.0)


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


class Stack:
    """One run of the three processes; `run()` returns the report dict."""

    def __init__(self, opts: StackOptions, out: Callable[[str], None]) -> None:
        self.o = opts
        self.out = out
        self.run_dir = Path()
        self.t0 = 0.0
        self.status: dict[str, Any] | None = None
        self.counters: dict[str, int] = {}
        self.control: Client | None = None
        self.hv: Child | None = None
        self.pager: Child | None = None
        self.guest: Child | None = None
        self.lives: LifeLog[PagerLife] = LifeLog(self._life_stats)
        self.arm_next: Fault | None = None
        self.pager_stop = False  # no more restarts
        self.attach_event = trio.Event()
        self.pager_exited = trio.Event()
        self.restart_gate = trio.Event()
        self.restart_gate.set()
        self.last_epoch = 0
        self.final_n = 0  # the pager incarnation asked to page everything in at the end
        self.orphaned = False
        self.orphan_note: str | None = None
        self.violations: list[str] = []
        self.injected: Counter[str] = Counter()
        self.fault_log: list[dict[str, Any]] = []
        self.proxy: FaultProxy | None = None
        self.guest_progress: dict[str, Any] = {}
        self._guest_log_pos = 0
        self.stop_requested = trio.Event()
        self.phase = "starting"
        self.report: dict[str, Any] = {}

    # ---- paths ----------------------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds since the workload started."""
        return trio.current_time() - self.t0

    # ---- the run --------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Start everything, run, check, stop; the report (raises StackError on start-up)."""
        self.run_dir = prepare_run_dir(self.o.run_dir, use_proxy=self.o.use_proxy)
        started = time.monotonic()
        self.t0 = trio.current_time()
        async with open_children(self.run_dir) as children, trio.open_nursery() as nursery:
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
                self.pager = children.add("pager", self._pager_argv())
                nursery.start_soon(self._pager_supervisor)
                await self._wait_first_attach()
                if self.stop_requested.is_set():
                    raise StackError("interrupted during start-up; every child stopped")
                self.guest = children.add("guest", self._guest_argv())
                await self.guest.start()
                self.t0 = trio.current_time()
                self.phase = "workload"
                nursery.start_soon(self._display)
                async with trio.open_nursery() as faults:
                    faults.start_soon(self._faults)
                    guest_rc = await self._wait_guest()
                    faults.cancel_scope.cancel()
                if self.proxy is not None and self.proxy.disarm():
                    self.fault_log.append({"at": round(self.elapsed(), 3), "event": "cut disarmed"})
                await self._end_phase(children, guest_rc)
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
        argv = [
            *o.hv_cmd,
            "--run-dir",
            str(self.run_dir),
            "--nr-gfns",
            str(o.nr_gfns),
            "--vcpus",
            str(o.vcpus),
            "--ring-size",
            str(o.ring_size),
            "--ring-mode",
            o.ring_mode,
            "--target",
            str(o.effective_target),
        ]
        if o.host_frames is not None:
            argv += ["--host-frames", str(o.host_frames)]
        hv = self.hv = children.add("hv", argv)
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

    def _pager_argv(self) -> list[str]:
        o = self.o
        net = self.run_dir / ("pager-net" if o.use_proxy else "")
        argv = [
            *o.pager_cmd,
            "--run-dir",
            str(net),
            "--state-dir",
            str(self.run_dir / "state"),
            "--domid",
            "1",
            # Bounded retries of a refused hello: in xen mode a refused pager must give up.
            "--hello-timeout",
            "3",
        ]
        if o.policy:
            argv += ["--policy", o.policy]
        return argv

    def _guest_argv(self) -> list[str]:
        o = self.o
        argv = [
            *o.guest_cmd,
            "--run-dir",
            str(self.run_dir),
            "--domid",
            "1",
            "--vcpus",
            str(o.vcpus),
            "--pattern",
            o.pattern,
            "--seed",
            str(o.seed),
            "--write-ratio",
            str(o.write_ratio),
            "--stuck-after",
            str(o.stuck_after),
            "--fault-ms",
            str(o.fault_ms),
            "--balloon-every",
            str(o.balloon_every),
            "--report",
            str(self.run_dir / "guest-report.json"),
            "--shadow",
            str(self.run_dir / "guest.shadow"),
        ]
        # Without a duration the guest runs until the stack sends it SIGTERM.
        duration = o.guest_duration
        argv += ["--duration", str(duration if duration is not None else 10.0**9)]
        return argv

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
                self.pager_stop = True
                self.stop_requested.set()
                if self.guest is not None:
                    self.guest.kill()
                return
            for d in counters["domains"]:
                if d["domid"] == 1:
                    self.counters = d["counters"]
            dom = self._dom()
            if dom is not None:
                pager = dom["pager"]
                if pager["attached"] and pager["epoch"] > self.last_epoch:
                    self.last_epoch = pager["epoch"]
                    if self.lives and self.lives[-1].rc is None:
                        self.lives[-1].attached = True
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
                return d
        return None

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

    # ---- the pager --------------------------------------------------------------------

    async def _pager_supervisor(self) -> None:
        """Start the pager, restart it whenever it dies (until told to stop)."""
        assert self.pager is not None
        failed_starts = 0
        backoff = 0.05
        while not self.pager_stop:
            await self.restart_gate.wait()  # closed while the end phase reads the store
            if self.pager_stop:
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
            rc = await self.pager.wait()
            life.rc, life.ended = rc, round(self.elapsed(), 3)
            self.pager_exited.set()
            self.pager_exited = trio.Event()
            log.info("stack.pager_exited", n=life.n, pid=life.pid, rc=rc, cause=life.cause)
            if self.pager_stop:
                return
            if self.orphaned:
                # Faithful Xen: no pager can attach to an orphaned ring. Say so, stop trying.
                self.pager_stop = True
                return
            # A life the schedule killed before it could attach (a slow start on a loaded
            # machine) did not fail to start: only deaths of the pager's own count.
            failed_starts = 0 if life.attached or life.killed_by else failed_starts + 1
            if failed_starts >= MAX_FAILED_STARTS:
                self.pager_stop = True
                return
            backoff = 0.05 if life.attached or life.killed_by else min(backoff * 2, 1.0)
            await trio.sleep(backoff)

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

    def _kill_pager(self, why: str) -> bool:
        """SIGKILL the running pager, recording why; False if none was running."""
        if self.pager is None or not self.pager.running or not self.lives:
            return False
        self.lives[-1].killed_by = why
        self.pager.kill()
        return True

    # ---- faults -------------------------------------------------------------------------

    async def _faults(self) -> None:
        """Play the schedule: each fault at its instant (seconds from the workload start)."""
        for fault in self.o.schedule:
            await trio.sleep_until(self.t0 + fault.at)
            entry: dict[str, Any] = {"at": round(self.elapsed(), 3), **fault.to_dict()}
            entry["at"], entry["planned_at"] = round(self.elapsed(), 3), fault.at
            if self.orphaned or self.pager_stop:
                entry["outcome"] = "skipped: no pager can attach"
            elif fault.kind == "kill":
                entry["outcome"] = "killed" if self._kill_pager("kill") else "skipped: no pager"
            elif fault.kind in ("crash", "store"):
                # Restart the pager armed with this fault (the restart is a SIGKILL too).
                self.arm_next = fault
                killed = self._kill_pager(f"arm_{fault.kind}")
                entry["outcome"] = f"restart armed {fault.spec}" + ("" if killed else " (was down)")
            elif fault.kind == "cut":
                assert self.proxy is not None
                self.proxy.arm_cut(fault.params["direction"], fault.params["fraction"])
                entry["outcome"] = "cut armed"
            self.injected[fault.kind] += 1
            self.fault_log.append(entry)
            log.info(
                "stack.fault", **{k: v for k, v in entry.items() if k != "kind"}, fault=fault.kind
            )

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

    async def _end_phase(self, children: ChildSet, guest_rc: int) -> None:
        self.phase = "checking"
        o = self.o
        assert self.control is not None and self.pager is not None
        guest_report = self._load_guest_report(guest_rc)
        store_mid: StoreCheck | None = None
        store_end: StoreCheck | None = None
        final: dict[str, Any] | None = None
        paged_in = False
        if self.orphaned or self._dom_orphaned():
            self.pager_stop = True
            self.orphaned = True
            await self.pager.stop(grace=3.0)
        elif self.pager_stop and not self.pager.running:
            self.violations.append("the pager kept failing to start; nothing paged in")
        else:
            # 1. Kill the pager once more and hold its store against the audit (invariant 4).
            await self._settle_pager()
            self.restart_gate = trio.Event()  # no restart until the store has been read
            self._kill_pager(FINAL_KILL)
            await self._wait_pager_down()
            types, frames = await self._audit()
            store_mid = await trio.to_thread.run_sync(
                check_store, self.run_dir / "state", types, frames
            )
            self.restart_gate.set()
            self.violations += store_mid.violations(resident_rows_allowed=True)
            # 2. A fresh pager recovers from that store; SIGTERM makes it page everything in.
            await self._settle_pager()
            self.pager_stop = True
            self.final_n = len(self.lives)
            rc = await self.pager.stop(grace=o.end_timeout)
            paged_in = rc == 0
            if not paged_in:
                self.violations.append(f"pager did not page everything in and exit (status {rc})")
            types, frames = await self._audit()
            store_end = await trio.to_thread.run_sync(
                check_store, self.run_dir / "state", types, frames
            )
            self.violations += store_end.violations(resident_rows_allowed=False)
            dom = await self._fresh_dom()
            if dom["paged_pages"]:
                self.violations.append(f"{dom['paged_pages']} gfns still paged out after page-in")
            # 3. Every gfn, now resident, read back through guest.sock.
            final = await self._final_verify()
        check = await self.control.call("check")
        self.violations += [f"hv: {v}" for v in check["violations"]]
        status = await self._fresh_dom()
        self.phase = "done"
        self._build_report(
            guest_report, guest_rc, store_mid, store_end, final, check, status, paged_in
        )

    def _dom_orphaned(self) -> bool:
        dom = self._dom()
        return bool(dom and dom["pager"]["orphaned"])

    async def _settle_pager(self) -> None:
        """Wait (bounded) until a pager is attached again after the last restart."""
        with trio.move_on_after(self.o.start_timeout):
            while True:
                dom = await self._fresh_dom()
                if dom["pager"]["attached"] and self.pager is not None and self.pager.running:
                    return
                if self.pager_stop and not (self.pager and self.pager.running):
                    return
                await trio.sleep(0.05)
        self.violations.append(f"no pager attached within {self.o.start_timeout:g} s at the end")

    async def _wait_pager_down(self) -> None:
        """Wait until the killed pager is reaped and restarted (the supervisor restarts it)."""
        assert self.pager is not None
        life = self.lives[-1]
        with trio.move_on_after(self.o.start_timeout):
            while life.rc is None:
                await self.pager_exited.wait()

    async def _fresh_dom(self) -> dict[str, Any]:
        assert self.control is not None
        self.status = await self.control.call("status")
        dom = self._dom()
        assert dom is not None
        return dom

    async def _audit(self) -> tuple[bytes, bytes]:
        """Types and has-frame bitmap of every gfn, via the control role's `audit`."""
        assert self.control is not None
        types, frames = bytearray(), bytearray()
        for start in range(0, self.o.nr_gfns, MAX_AUDIT_COUNT):
            count = min(MAX_AUDIT_COUNT, self.o.nr_gfns - start)
            reply = await self.control.call("audit", domid=1, start=start, count=count)
            types += reply["types"]
            frames += reply["frames"]  # MAX_AUDIT_COUNT is a multiple of 8: bitmaps concatenate
        return bytes(types), bytes(frames)

    async def _final_verify(self) -> dict[str, Any] | None:
        shadow_path = self.run_dir / "guest.shadow"
        if not shadow_path.exists():
            self.violations.append("the guest left no shadow: final verify impossible")
            return None
        shadow = Shadow.load(shadow_path)
        async with open_unix_client(str(self.run_dir / "guest.sock"), "guest") as client:
            await client.hello(1)
            report = await verify_all(
                client, shadow, vcpus=self.o.vcpus, stuck_after=self.o.stuck_after
            )
        if not report.ok:
            self.violations.append(
                f"final verify: {report.integrity_errors} integrity errors, "
                f"{report.unverified} gfns unverified, stuck vCPUs {report.stuck_vcpus}"
            )
        return {
            "verified": report.verified,
            "integrity_errors": report.integrity_errors,
            "unverified": report.unverified,
            "stuck_vcpus": report.stuck_vcpus,
            "latency_ms": report.latency_ms
            if report.latency_ms["max"]
            else report.verify_latency_ms,
            "details": report.error_details[:10],
        }

    def _load_guest_report(self, rc: int) -> dict[str, Any] | None:
        path = self.run_dir / "guest-report.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            self.violations.append(f"guest exited with status {rc} and no report")
            return None

    def _life_stats(self, lives: Iterable[PagerLife]) -> Counter[str]:
        """The report's counts over `lives` (LifeLog folds old lives through this)."""
        c: Counter[str] = Counter()
        for life in lives:
            c["final_kills"] += life.killed_by == FINAL_KILL
            if life.rc is None:
                continue
            c[f"ends:{life.cause}"] += 1
            c["never_attached"] += not life.attached
            # Deaths during the run: every end except the end phase's own kill and SIGTERM.
            if life.killed_by != FINAL_KILL and life.n != self.final_n:
                c["mid_run"] += 1
                c["kills"] += bool(life.killed_by)
                c["crash_points"] += life.cause == "crash_point"
        return c

    def _build_report(
        self,
        guest: dict[str, Any] | None,
        guest_rc: int,
        store_mid: StoreCheck | None,
        store_end: StoreCheck | None,
        final: dict[str, Any] | None,
        check: dict[str, Any],
        dom: dict[str, Any],
        paged_in: bool,
    ) -> None:
        o = self.o
        lives = self.lives.stats()
        deaths = {k[5:]: v for k, v in sorted(lives.items()) if k.startswith("ends:")}
        # Restarts that followed a death during the run (not the end phase's own restart).
        restarts = max(0, len(self.lives) - 1 - lives["final_kills"])
        cuts_fired = len(self.proxy.cuts) if self.proxy else 0
        stuck = list(guest["stuck_vcpus"]) if guest else []
        integrity = (guest["integrity_errors"] if guest else 0) + (
            final["integrity_errors"] if final else 0
        )
        lost = len(guest["lost_gfns"]) if guest else 0
        if guest is not None and not guest["ok"] and not stuck and not guest["integrity_errors"]:
            self.violations.append(
                f"guest failed: {guest.get('unexpected_errors') or guest.get('aborted')}"
            )
        if guest_rc not in (0, 1):
            self.violations.append(f"guest exited with status {guest_rc}")
        if self.orphaned and not stuck:
            paused = dom["paused_vcpus"]
            if paused:
                stuck = list(paused)
        ok = not self.violations and integrity == 0 and not stuck and not self.orphaned
        ok = ok and guest is not None and guest["ok"]
        c = self.counters
        self.report = {
            "command": o.command,
            "ok": ok,
            "seed": o.seed,
            "run_dir": str(self.run_dir),
            "logs": {n: str(self.run_dir / f"{n}.log") for n in ("hv", "pager", "guest")},
            "config": {
                "nr_gfns": o.nr_gfns,
                "target": o.effective_target,
                "vcpus": o.vcpus,
                "ring_size": o.ring_size,
                "ring_mode": o.ring_mode,
                "pattern": o.pattern,
                "duration": o.duration,
                "guest_duration": o.guest_duration,
                "stuck_after": o.stuck_after,
                "policy": o.policy,
            },
            "schedule": schedule_to_list(o.schedule),
            "faults_injected": dict(self.injected),
            "faults_log": self.fault_log,
            "pager": {
                "starts": len(self.lives),
                "restarts_survived": restarts,
                "kills": lives["kills"],
                "crash_points_fired": lives["crash_points"],
                "pager_deaths": lives["mid_run"],
                "cuts_fired": cuts_fired,
                "ends": deaths,
                "attaches": self.last_epoch,
                # Pagers that ended without ever attaching (xen mode: refused with EBUSY).
                "never_attached": lives["never_attached"],
                "paged_everything_in": paged_in,
                # The latest lives (stack/lives.py: older ones only in the counts above).
                "lives": [vars(life) | {"cause": life.cause} for life in self.lives],
            },
            "pages": {
                "out": c.get("page.evicted", 0),
                "in": c.get("page.prepped", 0),
                "populated": c.get("page.populated", 0),
                "nominated": c.get("page.nominated", 0),
                "broken": c.get("page.broken", 0),
                "counters": c,
            },
            "guest": guest,
            "faults_seen_by_guest": guest["faults_seen"] if guest else None,
            "latency_ms": guest["latency_ms"] if guest else None,
            "final_verify": final,
            "store_before_pagein": store_mid.to_dict() if store_mid else None,
            "store_after_pagein": store_end.to_dict() if store_end else None,
            "hv_violations": check["violations"],
            "integrity_errors": integrity,
            "lost_gfns": lost,
            "stuck_vcpus": stuck,
            "ring_orphaned": self.orphaned,
            "orphan_note": self.orphan_note,
            "final_status": dom,
            "violations": self.violations,
        }

    # ---- live view ------------------------------------------------------------------------

    async def _display(self) -> None:
        """Live progress: a rich panel on a terminal, a plain line every few seconds otherwise."""
        live = self.o.live if self.o.live is not None else sys.stdout.isatty()
        if live:
            from rich.live import Live

            with Live(self._panel(), refresh_per_second=4, transient=True) as view:
                while True:
                    await trio.sleep(0.5)
                    view.update(self._panel())
        else:
            # One early line (the run is alive), then one every few seconds.
            await trio.sleep(1.0)
            while True:
                self.out(self._line())
                await trio.sleep(5.0)

    def _line(self) -> str:
        dom = self._dom() or {}
        g = self.guest_progress
        pager = dom.get("pager", {})
        return (
            f"[{self.elapsed():6.1f}s {self.phase}] tot_pages={dom.get('tot_pages')} "
            f"target={dom.get('target')} paged={dom.get('paged_pages')} "
            f"ring={dom.get('ring', {}).get('used')} paused={dom.get('paused_vcpus')} "
            f"pager={'up' if pager.get('attached') else 'DOWN'} epoch={pager.get('epoch')} "
            f"restarts={max(0, len(self.lives) - 1)} faults={sum(self.injected.values())} "
            f"out/in={self.counters.get('page.evicted', 0)}/{self.counters.get('page.prepped', 0)} "
            f"guest ops={g.get('ops', 0)} slow={g.get('faults_seen', 0)} "
            f"errors={g.get('integrity_errors', 0)} stuck={g.get('stuck_vcpus', 0)}"
        )

    def _panel(self) -> Any:
        """The live view: a compact two-column table that fits an 80-column terminal."""
        from rich.table import Table

        dom = self._dom() or {}
        g = self.guest_progress
        pager = dom.get("pager", {})
        ring = dom.get("ring", {})
        c = self.counters
        t = Table(
            title=f"xpemu {self.o.command}  {self.elapsed():.1f}s  {self.phase}",
            show_header=False,
            expand=False,
        )
        t.add_column(style="bold")
        t.add_column()
        t.add_row(
            "domain 1",
            f"tot_pages {dom.get('tot_pages')} / target {dom.get('target')}, "
            f"paged {dom.get('paged_pages')}",
        )
        t.add_row(
            "ring",
            f"{ring.get('used')}/{ring.get('size')} used, {ring.get('waiters')} waiting; "
            f"paused vCPUs {dom.get('paused_vcpus') or '-'}",
        )
        state = "attached" if pager.get("attached") else "DOWN"
        if pager.get("orphaned"):
            state = "ORPHANED (xen mode)"
        t.add_row(
            "pager",
            f"{state}, epoch {pager.get('epoch')}, restarts {max(0, len(self.lives) - 1)}",
        )
        t.add_row(
            "pages",
            f"out {c.get('page.evicted', 0)}, in {c.get('page.prepped', 0)}, "
            f"guest populates {c.get('page.populated', 0)}",
        )
        t.add_row(
            "guest",
            f"ops {g.get('ops', 0)}, slow {g.get('faults_seen', 0)}, "
            f"errors {g.get('integrity_errors', 0)}, stuck {g.get('stuck_vcpus', 0)}",
        )
        if self.o.schedule:
            t.add_row(
                "faults",
                f"{sum(self.injected.values())}/{len(self.o.schedule)} "
                + (", ".join(f"{k} {n}" for k, n in sorted(self.injected.items())) or ""),
            )
        if self.orphan_note:
            t.add_row("XEN", f"[bold red]{self.orphan_note}[/]")
        return t


def summary_text(report: dict[str, Any]) -> str:
    """The readable end-of-run summary."""
    p = report["pager"]
    pages = report["pages"]
    lat = report.get("latency_ms") or {}
    g = report.get("guest") or {}
    lines = [
        f"xpemu {report['command']}: {'PASSED' if report['ok'] else 'FAILED'}  "
        f"seed={report['seed']}  elapsed={report.get('elapsed_s', 0)}s",
        f"  run dir {report['run_dir']}  (logs: hv.log, pager.log, guest.log)",
        f"  faults injected: {report['faults_injected'] or 'none'}",
        f"  pager deaths {p['pager_deaths']} (SIGKILLs {p['kills']}, crash points fired "
        f"{p['crash_points_fired']}), cuts fired {p['cuts_fired']}; restarts survived "
        f"{p['restarts_survived']}",
        f"  pages out {pages['out']}, in {pages['in']}, guest populates {pages['populated']}; "
        f"faults seen by the guest {report.get('faults_seen_by_guest')}",
        f"  guest ops {g.get('ops', 0)}  latency ms p50 {lat.get('p50', 0)}  "
        f"p99 {lat.get('p99', 0)}  max {lat.get('max', 0)}",
        f"  integrity errors {report['integrity_errors']}, lost gfns {report['lost_gfns']}, "
        f"stuck vCPUs {report['stuck_vcpus'] or 0}, hv violations "
        f"{len(report['hv_violations'])}",
    ]
    final = report.get("final_verify")
    if final:
        lines.append(
            f"  final verify after page-in: {final['verified']} gfns, "
            f"{final['integrity_errors']} errors"
        )
    if report.get("orphan_note"):
        lines.append(f"  XEN RING MODE: {report['orphan_note']}")
        lines.append(
            f"  pagers refused after the loss: {p['never_attached']}; paged-out gfns "
            f"unreachable: {report['final_status']['paged_pages']}; stuck vCPUs "
            f"{report['stuck_vcpus']}"
        )
    for v in report["violations"][:10]:
        lines.append(f"  violation: {v}")
    return "\n".join(lines)


async def run_stack(opts: StackOptions, out: Callable[[str], None]) -> dict[str, Any]:
    """Run the stack once; the report. StackError for a one-line start-up failure."""
    stack = Stack(opts, out)
    try:
        return await stack.run()
    except BaseExceptionGroup as group:
        exc = _decisive(group)
        raise _hv_death(stack, exc) from None
    except StartError as exc:
        raise StackError(str(exc)) from None


def _hv_death(stack: Stack, exc: BaseException) -> BaseException:
    """A lost connection because hv itself died says so, with its status and its log."""
    hv = stack.hv
    if (
        isinstance(exc, StackError)
        and exc.args
        and str(exc.args[0]).startswith("lost a connection")
        and hv is not None
        and hv.died_on_its_own is not None
    ):
        return StackError(
            f"hv died during the run (status {hv.died_on_its_own}): "
            f"{last_line(hv.log_path) or 'no output'} (log: {hv.log_path})"
        )
    return exc


def _decisive(group: BaseExceptionGroup) -> BaseException:
    """The exception that explains a failed run, out of a nursery's group."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for kind in (KeyboardInterrupt, StackError, StartError, OpError, ConnectionClosed, OSError):
        for exc in leaves:
            if isinstance(exc, kind):
                if isinstance(exc, StackError | KeyboardInterrupt):
                    return exc
                if isinstance(exc, StartError):
                    return StackError(str(exc))
                if isinstance(exc, OpError):
                    return StackError(f"hv refused a control request: {exc}")
                return StackError(f"lost a connection to hv: {exc}")
    return group
