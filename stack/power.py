"""Power faults for real processes: the lazy file system under the pager's state directory,
cut together with the pager, remounted; a disk that lies; what each cut lost.

`open_power` mounts `stack/lazyfs.py` on ``<run dir>/state`` over the durable bytes in
``<run dir>/state.disk`` when the schedule has a `power` or `lie` fault, and on every way
out (a finished run, Ctrl-C, a failed start) stops it, unmounts it and puts the store back
at ``state``. It needs nothing from the pager but that directory, so it works for any
``--pager-cmd``.

- `power`: aim (wait, up to `TRIP_WAIT_S`, for a pager write, taken but not answered),
  SIGKILL the pager, keep it down (the supervisor's restart gate), cut the file system's
  power (`LazyDisk.cut`: gentle, or harsh with a seeded subset and a torn write), SIGKILL
  it, unmount, mount again over what survived, let the pager restart.
- `lie`: for `for` seconds (or until the next cut) syncs succeed and make nothing durable.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, Protocol

import structlog
import trio

from .lives import LifeLog
from .procs import StartError, last_line
from .schedule import Fault
from .supervisor import PagerLife, Spawner

log = structlog.get_logger("stack.power")

#: The fault kinds this module plays (and the ones that need FUSE).
POWER_KINDS: Final = ("power", "lie")

#: An aimed cut trips on one of the next this many writes (from the fault's seed), so it
#: falls at different points of a phase's writes.
TRIP_SPREAD: Final = 8

#: Longest a cut waits for the pager to write, before it falls anyway.
TRIP_WAIT_S: Final = 2.0

#: Longest the lazy file system may take to answer one control request.
REQUEST_BOUND_S: Final = 30.0

#: Default seconds between two scheduled faults when the kinds include `power`: a cut
#: (pager down, file system killed, unmounted, mounted again) and the new pager's start
#: take seconds, not the instant of a SIGKILL; closer faults would keep the pager down
#: for good and leave every vCPU stuck.
POWER_SPACING: Final = 3.0

#: Seconds a stopped file system gets to unmount itself before it is SIGKILLed.
STOP_GRACE: Final = 3.0

#: How a missing FUSE is fixed, said once in every refusal.
INSTALL_HINT: Final = (
    "apt-get install fuse3; in a container: --device /dev/fuse --cap-add SYS_ADMIN"
)


def fuse_problem() -> str | None:
    """Why power faults cannot run here (one line), or None when FUSE is usable."""
    if not os.path.exists("/dev/fuse"):
        return f"power faults need FUSE, and /dev/fuse does not exist ({INSTALL_HINT})"
    if shutil.which("fusermount3") is None:
        return f"power faults need FUSE, and fusermount3 is not installed ({INSTALL_HINT})"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        why = exc.strerror
        return f"power faults need FUSE, and /dev/fuse cannot be opened: {why} ({INSTALL_HINT})"
    if ctypes.util.find_library("fuse3") is None:
        return f"power faults need FUSE, and libfuse3 is not installed ({INSTALL_HINT})"
    return None


def is_mounted(path: Path) -> bool:
    """True if `path` is a mount point (per /proc/self/mountinfo)."""
    return str(path) in mount_points()


def mount_points() -> set[str]:
    """Every mount point of this mount namespace."""
    with open("/proc/self/mountinfo") as f:
        # Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
        return {line.split()[4].encode().decode("unicode_escape") for line in f if line.strip()}


async def unmount(path: Path) -> None:
    """Lazily unmount a FUSE mount whose server is gone (no-op if not mounted)."""
    if is_mounted(path):
        await trio.run_process(
            ["fusermount3", "-u", "-z", str(path)], check=False, capture_stderr=True
        )


class PagerHost(Protocol):
    """What a power cut needs from the pager's supervisor (supervisor.PagerSupervisor):
    kill the pager, hold its restart (the supervisor waits for `restart_gate` before each
    start)."""

    restart_gate: trio.Event
    pager: Spawner
    lives: LifeLog[PagerLife]
    stopped: bool

    def kill(self, why: str) -> bool: ...


def kill_recorded_pager(sup: PagerHost) -> bool:
    """SIGKILL the running pager if its supervisor has recorded it (`kill` marks the
    latest life); True if one was."""
    pager = sup.pager
    life = sup.lives[-1] if sup.lives else None
    if pager.running and life is not None and life.pid == pager.pid and life.rc is None:
        return sup.kill("power")
    return False


async def hold_pager_down(sup: PagerHost, gate: trio.Event) -> bool:
    """SIGKILL the pager and wait until its supervisor waits at `gate` (closed) or has
    stopped for good; True if a pager was killed.

    Closing the gate is not enough: the supervisor may have passed the old gate and be
    starting a pager, which would then find the state directory unmounted. Polled (every
    10 ms, bounded by the caller's deadline): the supervisor signals none of its states.
    """
    killed = False
    while True:
        if sup.pager.running:
            killed = kill_recorded_pager(sup) or killed
        elif gate.statistics().tasks_waiting or sup.stopped:
            return killed
        await trio.sleep(0.01)


class LazyFs:
    """One process of the lazy file system, mounted on `mount` over `backing`."""

    def __init__(self, backing: Path, mount: Path, log_path: Path) -> None:
        self.backing, self.mount, self.log_path = backing, mount, log_path
        self.proc: trio.Process | None = None
        self._buf = bytearray()
        self._lock = trio.Lock()

    async def start(self, wait: float) -> None:
        """Mount; StartError (one line) if it is not serving within `wait` seconds."""
        with open(self.log_path, "ab") as err:  # noqa: ASYNC230 - a local log file, instant
            self.proc = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "stack.lazyfs",
                    "--backing",
                    str(self.backing),
                    "--mount",
                    str(self.mount),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        with trio.move_on_after(wait):
            try:
                ready = await self._readline()
            except EOFError:
                ready = {}
            if ready.get("event") == "ready":
                log.info("lazyfs.mounted", pid=self.proc.pid, mount=str(self.mount))
                return
        await self.kill()
        said = last_line(self.log_path) or "no output"
        raise StartError(f"the lazy file system did not mount on {self.mount}: {said}")

    async def _readline(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        while b"\n" not in self._buf:
            chunk = await self.proc.stdout.receive_some()
            if not chunk:
                raise EOFError("lazyfs closed its stdout")
            self._buf += chunk
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        return json.loads(line)

    async def request(self, **cmd: Any) -> dict[str, Any]:
        """One control command and its answer."""
        assert self.proc is not None and self.proc.stdin is not None
        async with self._lock:
            # One line out, one answer back, never cut in between: an answer left unread
            # would be taken as the next request's. Bounded by its own deadline.
            try:
                with trio.CancelScope(shield=True), trio.fail_after(REQUEST_BOUND_S):
                    await self.proc.stdin.send_all(json.dumps(cmd).encode() + b"\n")
                    reply = await self._readline()
            except trio.TooSlowError:
                raise StartError(
                    f"the lazy file system did not answer {cmd['op']!r} within "
                    f"{REQUEST_BOUND_S:g} s (log: {self.log_path})"
                ) from None
            except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
                said = last_line(self.log_path) or "no output"
                raise StartError(
                    f"the lazy file system died (log: {self.log_path}): {said}"
                ) from None
        if not reply.get("ok"):
            raise RuntimeError(f"lazyfs refused {cmd}: {reply.get('error')}")
        return reply

    async def kill(self) -> None:
        """SIGKILL (the power is gone), reap, and unmount what it left."""
        if self.proc is not None:
            if self.proc.returncode is None:
                self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
            await self._close_pipes()
        await unmount(self.mount)

    async def stop(self) -> None:
        """SIGTERM (libfuse unmounts on its way out), SIGKILL after a grace period."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_GRACE):
                await self.proc.wait()
        await self.kill()

    async def _close_pipes(self) -> None:
        assert self.proc is not None
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                await pipe.aclose()


class PowerControl:
    """The lazy file system of one run: mounts, power cuts, lies, and their accounting."""

    def __init__(self, run_dir: Path, start_timeout: float, nursery: trio.Nursery) -> None:
        self.mount = run_dir / "state"
        self.backing = run_dir / "state.disk"
        self.log_path = run_dir / "lazyfs.log"
        self.start_timeout = start_timeout
        self.nursery = nursery
        self.fs: LazyFs | None = None
        self.generation = 0  # mounts so far: a lie ends with the mount it was told to
        self.cuts: list[dict[str, Any]] = []
        self.lies: list[dict[str, Any]] = []
        self.lied_syncs = 0
        self._report: dict[str, Any] = {}

    async def open(self) -> None:
        """Move the store to `state.disk` (the durable bytes) and mount over `state`."""
        await unmount(self.mount)  # left behind by a run that was SIGKILLed, if any
        if not self.backing.exists():
            self.mount.rename(self.backing)
            self.mount.mkdir()
        elif any(self.mount.iterdir()):
            raise StartError(f"both {self.mount} and {self.backing} hold a store: keep one")
        await self._mount()

    async def _mount(self) -> None:
        self.fs = LazyFs(self.backing, self.mount, self.log_path)
        self.generation += 1
        await self.fs.start(self.start_timeout)

    async def close(self) -> None:
        """Stop and unmount; the store goes back to `state`. Safe on every path."""
        if self.fs is not None:
            if self.fs.proc is not None and self.fs.proc.returncode is None:
                with trio.move_on_after(STOP_GRACE):
                    # A clean unmount: what the pager left unsynced is written out.
                    self.lied_syncs += (await self.fs.request(op="flush"))["lied_syncs"]
            await self.fs.stop()
            self.fs = None
            self._report["lied_syncs"] = self.lied_syncs  # the report dict, built before
        if self.backing.exists() and not is_mounted(self.mount):
            try:
                self.mount.rmdir()
            except OSError as exc:  # written to while unmounted: keep both, say so
                log.error("lazyfs.store_not_put_back", error=str(exc), store=str(self.backing))
                return
            self.backing.rename(self.mount)

    async def inject(self, fault: Fault, sup: PagerHost, at: float) -> str:
        """Play one `power` or `lie` fault; the fault log's outcome."""
        assert self.fs is not None
        if fault.kind == "lie":
            await self.fs.request(op="lie", on=True)
            self.lies.append({"at": at, "for": fault.params["for"]})
            self.nursery.start_soon(self._end_lie, fault.params["for"], self.generation)
            return f"syncs lie for {fault.params['for']:g} s"
        # Once the pager is down it must stay down until the disk is back: shielded.
        with trio.CancelScope(shield=True), trio.fail_after(3 * self.start_timeout):
            sup.restart_gate = gate = trio.Event()
            try:
                if await self._aim(fault.params["seed"] % TRIP_SPREAD):
                    # A write is in flight, its answer held: SIGKILL the pager, then cut
                    # (which lets the held answer go to a process that will never run on).
                    kill_recorded_pager(sup)
                    cut = await self._cut(fault)
                    await hold_pager_down(sup, gate)
                else:
                    await hold_pager_down(sup, gate)
                    cut = await self._cut(fault)
                await self.fs.kill()
                await self._mount()
            finally:
                gate.set()
        cut.pop("ok", None)
        self.lied_syncs += cut.pop("lied_syncs", 0)
        self.cuts.append({"at": at, **cut})
        return (
            f"power cut ({'harsh' if cut['harsh'] else 'all unsynced lost'}"
            f"{', aimed at a write in flight' if cut.get('aimed') else ''}): "
            f"{cut['writes_lost']} of {cut['unsynced_writes']} unsynced writes lost, "
            f"{cut['writes_torn']} torn, {cut['meta_ops_lost']} name ops lost; remounted"
        )

    async def _aim(self, after: int) -> bool:
        """Arm the file system to trip on a write and wait for one, at most `TRIP_WAIT_S`;
        True if one tripped (a pager writing nothing, or none running, leaves it False).

        A pager's writes stay unsynced only between a phase's write and its sync, so a
        cut at a random instant seldom finds one (0 in 31 of 31 cuts measured): aimed,
        every cut that finds the pager writing tests its syncs."""
        assert self.fs is not None
        await self.fs.request(op="trip", after=after)
        # A deadline, not a cancel scope: a request cut off between its line and its
        # answer would leave that answer to the next request (`request` is shielded too).
        deadline = trio.current_time() + TRIP_WAIT_S
        while trio.current_time() < deadline:  # polled: the control channel only answers
            if (await self.fs.request(op="stats"))["tripped"]:
                return True
            await trio.sleep(0.01)
        return bool((await self.fs.request(op="untrip"))["tripped"])

    async def _cut(self, fault: Fault) -> dict[str, Any]:
        assert self.fs is not None
        return await self.fs.request(
            op="cut", harsh=fault.params["harsh"], seed=fault.params["seed"]
        )

    async def _end_lie(self, seconds: float, generation: int) -> None:
        await trio.sleep(seconds)
        if self.generation == generation and self.fs is not None:
            await self.fs.request(op="lie", on=False)

    def report(self) -> dict[str, Any]:
        """The report's `power` section (`close` adds the last mount's lied syncs to it)."""
        self._report = {
            "power_faults": len(self.cuts),
            "harsh": sum(1 for c in self.cuts if c["harsh"]),
            "unsynced_writes": sum(c["unsynced_writes"] for c in self.cuts),
            "writes_lost": sum(c["writes_lost"] for c in self.cuts),
            "writes_torn": sum(c["writes_torn"] for c in self.cuts),
            "meta_ops_lost": sum(c["meta_ops_lost"] for c in self.cuts),
            "aimed": sum(1 for c in self.cuts if c.get("aimed")),
            "lies": len(self.lies),
            "lied_syncs": self.lied_syncs,
            "cuts": self.cuts,
        }
        return self._report


def needs_power(schedule: Sequence[Fault]) -> bool:
    """True if the schedule has a fault this module plays."""
    return any(f.kind in POWER_KINDS for f in schedule)


@asynccontextmanager
async def open_power(
    run_dir: Path, schedule: Sequence[Fault], start_timeout: float
) -> AsyncIterator[PowerControl | None]:
    """The run's lazy file system (None if the schedule needs none), always torn down."""
    if not needs_power(schedule):
        yield None
        return
    async with trio.open_nursery() as nursery:
        power = PowerControl(run_dir, start_timeout, nursery)
        try:
            await power.open()
            yield power
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await power.close()
