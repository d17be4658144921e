"""One run's state and its checked accesses: each read and write judged against the shadow.

Concurrency on one gfn is allowed and checked: several vCPUs may read one gfn at once (and
pause on the same page-in), and a read may overlap one write. Two writes to one gfn never
overlap (the second vCPU reads instead), so the version per gfn stays a total order, and a
read accepts exactly the versions that existed while it was pending.

"Slow" accesses: an access whose latency exceeds `fault_ms` is counted as a fault seen by
the guest (the guest's socket does not say whether hv paused the vCPU; an access served
from resident memory takes well under a millisecond, a page-in goes through the pager).
"""

from __future__ import annotations

import random
from typing import Any, Final

import structlog
import trio

from protocol import PAGE_SIZE, Errno
from transport import Client

from .config import GuestConfig
from .content import ZERO_PAGE, page_bytes
from .patterns import ZipfTable
from .report import GuestReport
from .shadow import GfnState, Shadow
from .stats import Latencies

log = structlog.get_logger("guest")

#: How many integrity errors are described one by one in the report (all are counted).
MAX_ERROR_DETAILS: Final = 20

#: Versions back from the expected one that `diagnose` tries when bytes do not match.
DIAGNOSE_DEPTH: Final = 16


def diagnose(seed: int, gfn: int, version: int, data: bytes, off: int) -> str:
    """Name what wrong bytes are, when recognisable: zeros, or another version of the gfn."""
    if data == ZERO_PAGE[: len(data)]:
        return "zeros"
    end = off + len(data)
    for v in range(max(1, version - DIAGNOSE_DEPTH), version + 3):
        if page_bytes(seed, gfn, v)[off:end] == data:
            return f"version {v} of this gfn"
    return "unrecognised bytes"


class CheckedRun:
    """The state of one run and its checked accesses; `workload._Run` adds its tasks."""

    def __init__(
        self, client: Client, config: GuestConfig, shadow: Shadow, vcpus: int, stop: trio.Event
    ) -> None:
        self.client = client
        self.cfg = config
        self.shadow = shadow
        self.nr_gfns = shadow.nr_gfns
        self.nvcpus = vcpus
        self.stop = stop
        self.report = GuestReport(
            seed=config.seed,
            pattern=config.pattern,
            vcpus=vcpus,
            nr_gfns=shadow.nr_gfns,
            fault_threshold_ms=config.fault_ms,
            stuck_after_s=config.stuck_after,
            shadow_bytes=shadow.nbytes(),
        )
        self.lat = Latencies()
        self.verify_lat = Latencies()
        # The accesses since the last progress line (its p50/p99/max, then emptied).
        self.window_lat = Latencies(highest_s=600.0, digits=2)
        self.fault_s = config.fault_ms / 1e3
        # Per-gfn concurrency bookkeeping; small dicts (at most one entry per vCPU).
        self.inflight: dict[int, int] = {}
        self.writing: dict[int, int] = {}  # gfn -> version being written
        self.busy: set[int] = set()  # gfns inside a balloon call: vCPUs keep off
        self.ballooned: list[int] = []  # gfns we ballooned out and will take back
        # Per-vCPU: when its pending access started (None: idle) and its phase.
        self.pending_since: list[float | None] = [None] * vcpus
        self.phase: list[str] = ["work"] * vcpus
        self.stuck: set[int] = set()
        self.draining = False  # the workload barrier has passed
        self.verify_go = trio.Event()
        self.balloon_done = trio.Event()
        self.drain = trio.Event()  # set with `draining`: wakes the balloon task at once
        self.finished = trio.Event()
        self.progress = trio.Event()
        self.verify_iter = iter(range(self.nr_gfns))
        self.scope = trio.CancelScope()
        self.t0 = trio.current_time()
        self.deadline = None if config.duration is None else self.t0 + config.duration
        self.zipf = (
            ZipfTable(self.nr_gfns, config.zipf_s, config.seed)
            if config.pattern == "zipf"
            else None
        )

    # ---- helpers -------------------------------------------------------------------

    def _poke(self) -> None:
        """Wake whoever waits for a phase change."""
        self.progress.set()
        self.progress = trio.Event()

    def stopping(self) -> bool:
        """True once the workload phase should end."""
        if self.draining or self.stop.is_set():
            return True
        if self.deadline is not None and trio.current_time() >= self.deadline:
            return True
        return self.cfg.ops is not None and self.report.ops >= self.cfg.ops

    def _integrity(self, gfn: int, op: str, phase: str, what: str) -> None:
        self.report.integrity_errors += 1
        detail = {"gfn": gfn, "op": op, "phase": phase, "what": what}
        if len(self.report.error_details) < MAX_ERROR_DETAILS:
            self.report.error_details.append(detail)
        log.error("guest.integrity_error", **detail)

    def _unexpected(self, gfn: int, op: str, err: str, msg: str) -> None:
        self.report.unexpected_errors[err] = self.report.unexpected_errors.get(err, 0) + 1
        if len(self.report.error_details) < MAX_ERROR_DETAILS:
            self.report.error_details.append({"gfn": gfn, "op": op, "err": err, "msg": msg})
        log.error("guest.unexpected_error", gfn=gfn, op=op, err=err, msg=msg)

    async def _timed(self, vcpu: int, lat: Latencies, op: str, **fields: Any) -> dict[str, Any]:
        """One access on `vcpu`, its pending time watched and its latency recorded."""
        t0 = trio.current_time()
        self.pending_since[vcpu] = t0
        try:
            reply = await self.client.request(op, vcpu=vcpu, **fields)
        finally:
            self.pending_since[vcpu] = None
        dt = trio.current_time() - t0
        lat.add(dt)
        self.window_lat.add(dt)
        if dt > self.fault_s:
            self.report.faults_seen += 1
        self.report.max_pending_s = max(self.report.max_pending_s, dt)
        return reply

    def _failed_access(self, gfn: int, state: int, op: str, phase: str, reply: dict) -> None:
        """Judge an access that answered an error, given the gfn's state when it began."""
        err = reply["err"]
        if err == Errno.EFAULT and state == GfnState.INVALID:
            self.report.efault_checks += 1
        elif err == Errno.EIO and state == GfnState.LOST:
            pass  # already counted when first seen
        elif err == Errno.EIO:
            # hv says `broken`: the pager lost the page. An honest error, but a lost page.
            self.shadow.lost(gfn)
            self.report.lost_gfns.append(gfn)
            self._integrity(gfn, op, phase, "EIO: page lost (broken)")
        elif err == Errno.EFAULT:
            self._integrity(gfn, op, phase, f"EFAULT on a gfn the guest holds ({state!r})")
        else:
            self._unexpected(gfn, op, err, reply.get("msg", ""))

    # ---- one access ----------------------------------------------------------------

    async def access(self, vcpu: int, gfn: int, write: bool, rng: random.Random) -> None:
        """One read or write of the workload phase, checked against the shadow."""
        shadow = self.shadow
        state, v0 = shadow.states[gfn], shadow.versions[gfn]
        if write and (gfn in self.writing or state == GfnState.LOST):
            write = False  # one writer per gfn keeps the version order total
        self.inflight[gfn] = self.inflight.get(gfn, 0) + 1
        try:
            if write:
                await self._write(vcpu, gfn, state, v0)
            else:
                await self._read(vcpu, gfn, state, v0, rng)
        finally:
            left = self.inflight[gfn] - 1
            if left:
                self.inflight[gfn] = left
            else:
                del self.inflight[gfn]

    async def _write(self, vcpu: int, gfn: int, state: int, v0: int) -> None:
        version = v0 + 1
        data = page_bytes(self.cfg.seed, gfn, version)
        self.writing[gfn] = version
        try:
            reply = await self._timed(vcpu, self.lat, "write", gfn=gfn, off=0, data=data)
        finally:
            del self.writing[gfn]
        self.report.writes += 1
        if not reply["ok"]:
            self._failed_access(gfn, state, "write", "workload", reply)
            return
        if state == GfnState.INVALID:
            self._integrity(gfn, "write", "workload", "write to a ballooned-out gfn succeeded")
        self.shadow.wrote(gfn, version)

    async def _read(self, vcpu: int, gfn: int, state: int, v0: int, rng: random.Random) -> None:
        if rng.random() < self.cfg.partial_reads:
            off = rng.randrange(PAGE_SIZE)
            length = rng.randint(1, PAGE_SIZE - off)
        else:
            off, length = 0, PAGE_SIZE
        reply = await self._timed(vcpu, self.lat, "read", gfn=gfn, off=off, len=length)
        self.report.reads += 1
        if not reply["ok"]:
            self._failed_access(gfn, state, "read", "workload", reply)
            return
        data = reply["data"]
        if state in (GfnState.INVALID, GfnState.LOST):
            self._integrity(gfn, "read", "workload", f"{GfnState(state).name} gfn returned data")
            return
        end = off + length
        first = ZERO_PAGE if state == GfnState.ZERO else page_bytes(self.cfg.seed, gfn, v0)
        if first[off:end] == data:
            return
        # Writes that overlapped this read (at most one at a time, but a long pause may span
        # several) make their versions acceptable too.
        hi = max(self.shadow.versions[gfn], self.writing.get(gfn, 0))
        for v in range(v0 + 1, hi + 1):
            if page_bytes(self.cfg.seed, gfn, v)[off:end] == data:
                return
        got = diagnose(self.cfg.seed, gfn, max(v0, hi), data, off)
        want = (
            "zeros" if state == GfnState.ZERO else f"version {v0}" + (f"..{hi}" if hi > v0 else "")
        )
        self._integrity(gfn, "read", "workload", f"expected {want} [{off}:{end}], got {got}")

    async def verify_gfn(self, vcpu: int, gfn: int) -> None:
        """Read `gfn` in full and compare it with the shadow (the workload is over)."""
        state = self.shadow.states[gfn]
        reply = await self._timed(vcpu, self.verify_lat, "read", gfn=gfn, off=0, len=PAGE_SIZE)
        self.report.verified += 1
        if not reply["ok"]:
            self._failed_access(gfn, state, "read", "verify", reply)
            return
        expected = self.shadow.expected(gfn)
        if expected is None:
            self._integrity(gfn, "read", "verify", f"{GfnState(state).name} gfn returned data")
        elif reply["data"] != expected:
            got = diagnose(self.cfg.seed, gfn, self.shadow.versions[gfn], reply["data"], 0)
            want = "zeros" if state == GfnState.ZERO else f"version {self.shadow.versions[gfn]}"
            self._integrity(gfn, "read", "verify", f"expected {want}, got {got}")
