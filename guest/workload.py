"""The guest workload: vCPUs as concurrent tasks on one connection, every byte checked.

Life of a run:

1. *workload*: each vCPU loops (pattern, read/write mix) until the duration, the op budget
   or a stop request ends it; a balloon task now and then gives gfns back
   (`decrease_reservation`, after which every access must answer EFAULT) and takes them
   back (`increase_reservation`: zeros);
2. *balloon-in*: every gfn still ballooned out comes back, so the end state is complete;
3. *verify*: the vCPUs read every gfn back in full and compare it with the shadow.

Concurrency on one gfn is allowed and checked: several vCPUs may read one gfn at once (and
pause on the same page-in), and a read may overlap one write. Two writes to one gfn never
overlap (the second vCPU reads instead), so the version per gfn stays a total order, and a
read accepts exactly the versions that existed while it was pending.

"Slow" accesses: an access whose latency exceeds `fault_ms` is counted as a fault seen by
the guest (the guest's socket does not say whether hv paused the vCPU; an access served
from resident memory takes well under a millisecond, a page-in goes through the pager).

"Stuck" vCPUs: a vCPU whose access stays pending longer than `stuck_after` seconds. The
guest cannot see whether a pager is attached (it has only `guest.sock`); the caller sets
`stuck_after` above the longest pager outage it expects (the stack sets it from its
restart timing), so a vCPU pending that long means no pager is serving it. Once only
stuck vCPUs are left pending after the workload, the run ends instead of hanging.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
import trio

from protocol import PAGE_SIZE, Errno
from transport import Client, ConnectionClosed

from .content import ZERO_PAGE, page_bytes
from .patterns import PATTERNS, ZipfTable, make_pattern
from .shadow import GfnState, Shadow
from .stats import Latencies

log = structlog.get_logger("guest")

#: How many integrity errors are described one by one in the report (all are counted).
MAX_ERROR_DETAILS: Final = 20

#: Versions back from the expected one that `diagnose` tries when bytes do not match.
DIAGNOSE_DEPTH: Final = 16

#: Seconds between progress log lines (`guest.progress`, read by `xpemu`'s live view).
PROGRESS_EVERY: Final = 1.0


@dataclass
class GuestConfig:
    """What the workload does; defaults suit a short demo run."""

    seed: int = 0
    pattern: str = "zipf"
    vcpus: int | None = None  # None: every vCPU the domain has
    duration: float | None = 10.0  # seconds of workload (None: until `ops` or a stop)
    ops: int | None = None  # total accesses across vCPUs (None: no limit)
    write_ratio: float = 0.3
    partial_reads: float = 0.2  # share of reads that read a sub-range of the page
    zipf_s: float = 1.1
    hot_fraction: float = 0.1
    hot_shift_s: float = 2.0
    balloon_every: float = 1.0  # seconds between balloon rounds; 0 disables ballooning
    balloon_count: int = 2  # gfns ballooned out per round
    fault_ms: float = 2.0  # an access slower than this counts as a fault seen
    stuck_after: float = 10.0  # an access pending longer than this marks its vCPU stuck
    verify: bool = True  # read every gfn back at the end

    def check(self) -> None:
        """ValueError naming the first bad setting."""
        if self.pattern not in PATTERNS:
            raise ValueError(
                f"unknown pattern {self.pattern!r} (choose from {', '.join(PATTERNS)})"
            )
        if not 0.0 <= self.write_ratio <= 1.0:
            raise ValueError("write ratio must be within [0, 1]")
        if not 0.0 <= self.partial_reads <= 1.0:
            raise ValueError("partial read share must be within [0, 1]")
        if self.vcpus is not None and self.vcpus < 1:
            raise ValueError("vcpus must be >= 1")
        if self.duration is not None and self.duration < 0:
            raise ValueError("duration must be >= 0")
        if self.ops is not None and self.ops < 0:
            raise ValueError("ops must be >= 0")
        if self.duration is None and self.ops is None:
            raise ValueError("give a duration or an op count")
        if self.zipf_s <= 0:
            raise ValueError("zipf skew must be > 0")
        if not 0.0 < self.hot_fraction <= 1.0:
            raise ValueError("hot fraction must be within (0, 1]")
        if self.hot_shift_s <= 0:
            raise ValueError("hot-set shift period must be > 0")
        if self.balloon_every < 0 or self.balloon_count < 0:
            raise ValueError("balloon settings must be >= 0")
        if self.fault_ms < 0:
            raise ValueError("fault threshold must be >= 0")
        if self.stuck_after <= 0:
            raise ValueError("stuck-after must be > 0")


@dataclass
class GuestReport:
    """What a run saw. `ok` is false on any integrity error, stuck vCPU or unexpected error."""

    seed: int
    pattern: str
    vcpus: int
    nr_gfns: int
    elapsed_s: float = 0.0
    reads: int = 0
    writes: int = 0
    efault_checks: int = 0  # accesses to ballooned-out gfns that correctly got EFAULT
    balloon_out: int = 0
    balloon_in: int = 0
    balloon_refused: dict[str, int] = field(default_factory=dict)
    faults_seen: int = 0
    fault_threshold_ms: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    integrity_errors: int = 0
    lost_gfns: list[int] = field(default_factory=list)
    unexpected_errors: dict[str, int] = field(default_factory=dict)
    error_details: list[dict[str, Any]] = field(default_factory=list)
    stuck_vcpus: list[int] = field(default_factory=list)
    stuck_after_s: float = 0.0
    max_pending_s: float = 0.0
    verified: int = 0
    unverified: int = 0
    verify_latency_ms: dict[str, float] = field(default_factory=dict)
    aborted: str | None = None
    shadow_bytes: int = 0

    @property
    def ops(self) -> int:
        """Accesses made in the workload phase."""
        return self.reads + self.writes

    @property
    def ok(self) -> bool:
        """True when every byte checked out and no vCPU got stuck."""
        return (
            self.integrity_errors == 0
            and not self.stuck_vcpus
            and not self.unexpected_errors
            and self.unverified == 0
            and self.aborted is None
        )

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data."""
        out = dataclasses.asdict(self)
        out["ops"] = self.ops
        out["ok"] = self.ok
        return out

    def summary(self) -> str:
        """A few readable lines."""
        lat = self.latency_ms
        lines = [
            f"guest: {'OK' if self.ok else 'FAILED'}  seed={self.seed} pattern={self.pattern} "
            f"vcpus={self.vcpus} gfns={self.nr_gfns} elapsed={self.elapsed_s:.1f}s",
            f"  ops {self.ops} (reads {self.reads}, writes {self.writes}), "
            f"faults seen {self.faults_seen} (> {self.fault_threshold_ms:g} ms), "
            f"EFAULT checks {self.efault_checks}, balloon out/in {self.balloon_out}/"
            f"{self.balloon_in}",
            f"  latency ms p50 {lat.get('p50', 0):.3f}  p99 {lat.get('p99', 0):.3f}  "
            f"max {lat.get('max', 0):.3f}",
            f"  verified {self.verified}/{self.nr_gfns} gfns, integrity errors "
            f"{self.integrity_errors}, lost gfns {len(self.lost_gfns)}, stuck vCPUs "
            f"{self.stuck_vcpus or 0} (pending > {self.stuck_after_s:g} s)",
        ]
        if self.unexpected_errors:
            lines.append(f"  unexpected errors: {self.unexpected_errors}")
        if self.aborted:
            lines.append(f"  aborted: {self.aborted}")
        lines.extend(f"  error: {d}" for d in self.error_details[:5])
        return "\n".join(lines)


def diagnose(seed: int, gfn: int, version: int, data: bytes, off: int) -> str:
    """Name what wrong bytes are, when recognisable: zeros, or another version of the gfn."""
    if data == ZERO_PAGE[: len(data)]:
        return "zeros"
    end = off + len(data)
    for v in range(max(1, version - DIAGNOSE_DEPTH), version + 3):
        if page_bytes(seed, gfn, v)[off:end] == data:
            return f"version {v} of this gfn"
    return "unrecognised bytes"


class _Run:
    """The state of one run; `run_workload` is its public face."""

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

    # ---- tasks ---------------------------------------------------------------------

    async def vcpu(self, vcpu: int) -> None:
        """One vCPU: workload loop, then its share of the verify pass."""
        cfg = self.cfg
        rng = random.Random(f"{cfg.seed}/vcpu/{vcpu}")
        next_gfn = make_pattern(
            cfg.pattern,
            nr_gfns=self.nr_gfns,
            vcpu=vcpu,
            vcpus=self.nvcpus,
            rng=rng,
            zipf=self.zipf,
            hot_fraction=cfg.hot_fraction,
            hot_shift_s=cfg.hot_shift_s,
        )
        while not self.stopping():
            gfn = next_gfn(trio.current_time() - self.t0)
            if gfn in self.busy:
                await trio.lowlevel.checkpoint()  # a balloon call holds it: pick another
                continue
            await self.access(vcpu, gfn, rng.random() < cfg.write_ratio, rng)
        self.phase[vcpu] = "waiting"
        self._poke()
        await self.verify_go.wait()
        self.phase[vcpu] = "verify"
        if cfg.verify:
            while (todo := next(self.verify_iter, None)) is not None:
                await self.verify_gfn(vcpu, todo)
        self.phase[vcpu] = "done"
        self._poke()

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

    async def balloon(self) -> None:
        """Now and then give a few gfns back to the host, and take earlier ones back."""
        try:
            await self._balloon_loop()
        finally:
            self.balloon_done.set()

    async def _balloon_loop(self) -> None:
        cfg = self.cfg
        if cfg.balloon_every <= 0 or cfg.balloon_count <= 0:
            return
        rng = random.Random(f"{cfg.seed}/balloon")
        while True:
            with trio.move_on_at(self._balloon_wake()):
                await self.drain.wait()
            if self.stopping():
                return
            await self.balloon_in()
            picked = []
            for _ in range(cfg.balloon_count * 4):
                gfn = rng.randrange(self.nr_gfns)
                if (
                    gfn not in self.inflight
                    and gfn not in self.busy
                    and self.shadow.states[gfn] in (GfnState.ZERO, GfnState.DATA)
                ):
                    picked.append(gfn)
                    self.busy.add(gfn)
                    if len(picked) == cfg.balloon_count:
                        break
            if not picked:
                continue
            try:
                reply = await self.client.request("decrease_reservation", gfns=picked)
            finally:
                self.busy.difference_update(picked)
            if not reply["ok"]:
                self._unexpected(picked[0], "decrease_reservation", reply["err"], reply["msg"])
                continue
            for gfn, res in zip(picked, reply["results"], strict=True):
                if res == 0:
                    self.shadow.ballooned_out(gfn)
                    self.ballooned.append(gfn)
                    self.report.balloon_out += 1
                elif res in (Errno.EAGAIN, Errno.EBUSY):
                    # Ring full or a foreign mapping holds it: nothing changed, by protocol.
                    self.report.balloon_refused[res] = self.report.balloon_refused.get(res, 0) + 1
                else:
                    self._unexpected(gfn, "decrease_reservation", res, "")
            log.debug("guest.balloon_out", gfns=picked, results=reply["results"])

    def _balloon_wake(self) -> float:
        return trio.current_time() + self.cfg.balloon_every

    async def balloon_in(self, *, everything: bool = False) -> None:
        """Take back the gfns ballooned out earlier (those no vCPU is touching right now)."""
        gfns = [g for g in self.ballooned if g not in self.inflight]
        if everything:
            gfns = [g for g in range(self.nr_gfns) if self.shadow.states[g] == GfnState.INVALID]
        if not gfns:
            return
        self.busy.update(gfns)
        try:
            reply = await self.client.request("increase_reservation", gfns=gfns)
        finally:
            self.busy.difference_update(gfns)
        if not reply["ok"]:
            self._unexpected(gfns[0], "increase_reservation", reply["err"], reply["msg"])
            return
        back = set()
        for gfn, res in zip(gfns, reply["results"], strict=True):
            if res == 0:
                self.shadow.ballooned_in(gfn)
                self.report.balloon_in += 1
                back.add(gfn)
            elif res == Errno.ENOMEM:
                self.report.balloon_refused[res] = self.report.balloon_refused.get(res, 0) + 1
            else:
                self._unexpected(gfn, "increase_reservation", res, "")
                back.add(gfn)  # do not retry forever
        self.ballooned = [g for g in self.ballooned if g not in back]

    async def coordinator(self) -> None:
        """Move the vCPUs from the workload to the verify pass once all are out of it."""

        def workload_over() -> bool:
            return all(
                self.phase[v] != "work" or (v in self.stuck and self.pending_since[v] is not None)
                for v in range(self.nvcpus)
            )

        while not workload_over():
            await self.progress.wait()
        self.draining = True
        self.drain.set()
        await self.balloon_done.wait()
        if self.cfg.balloon_every > 0:
            await self.balloon_in(everything=True)
        self.verify_go.set()

        def verify_over() -> bool:
            return all(
                self.phase[v] == "done" or (v in self.stuck and self.pending_since[v] is not None)
                for v in range(self.nvcpus)
            )

        while not verify_over():
            await self.progress.wait()
        self.finished.set()

    async def watchdog(self) -> None:
        """Mark stuck vCPUs, log progress, and end the run when only stuck vCPUs are left."""
        tick = min(0.25, self.cfg.stuck_after / 4)
        next_progress = trio.current_time() + PROGRESS_EVERY
        while True:
            with trio.move_on_after(tick):
                await self.finished.wait()
            now = trio.current_time()
            for v, since in enumerate(self.pending_since):
                if since is not None and now - since > self.cfg.stuck_after and v not in self.stuck:
                    self.stuck.add(v)
                    log.error("vcpu.stuck", vcpu=v, pending_s=round(now - since, 3))
                    self._poke()
            if now >= next_progress:
                next_progress = now + PROGRESS_EVERY
                self._log_progress()
            if self.finished.is_set():
                pending = [v for v, s in enumerate(self.pending_since) if s is not None]
                if not pending:
                    return
                # Only stuck vCPUs are left and their accesses may never return: end the
                # run rather than hang (their replies, if any, are no longer awaited).
                self.report.aborted = f"vCPUs {sorted(pending)} still paused at the end"
                log.error("guest.abandon_stuck", vcpus=sorted(pending))
                self.scope.cancel()
                return

    def _log_progress(self) -> None:
        r = self.report
        log.info(
            "guest.progress",
            ops=r.ops,
            reads=r.reads,
            writes=r.writes,
            faults_seen=r.faults_seen,
            verified=r.verified,
            integrity_errors=r.integrity_errors,
            stuck_vcpus=len(self.stuck),
            phase="verify" if self.draining else "workload",
        )

    async def run(self) -> GuestReport:
        """Run every phase; returns the report."""
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.watchdog)
                    nursery.start_soon(self.coordinator)
                    nursery.start_soon(self.balloon)
                    for v in range(self.nvcpus):
                        nursery.start_soon(self.vcpu, v)
        except BaseExceptionGroup as group:
            # A lost connection fails every vCPU at once: hand the caller one exception.
            closed, rest = group.split(ConnectionClosed)
            if closed is not None and rest is None:
                raise _first(closed) from None
            raise
        r = self.report
        r.elapsed_s = round(trio.current_time() - self.t0, 3)
        r.latency_ms = self.lat.summary_ms()
        r.verify_latency_ms = self.verify_lat.summary_ms()
        r.stuck_vcpus = sorted(self.stuck)
        r.max_pending_s = round(r.max_pending_s, 3)
        if self.cfg.verify:
            r.unverified = self.nr_gfns - r.verified
        return r


async def run_workload(
    client: Client,
    config: GuestConfig,
    *,
    stop: trio.Event | None = None,
    shadow: Shadow | None = None,
) -> GuestReport:
    """Run the workload over `client` (hello already done as role guest); never hangs on a
    stuck vCPU longer than `config.stuck_after` past the end of the workload.

    `stop` ends the workload phase early (the verify pass still runs). `shadow` lets the
    caller keep the shadow afterwards (for example to save it for a later check).
    """
    config.check()
    info = client.info
    if not info:
        raise ValueError("run_workload needs a client that said hello")
    vcpus = info["vcpus"] if config.vcpus is None else config.vcpus
    if vcpus > info["vcpus"]:
        raise ValueError(f"the domain has {info['vcpus']} vCPUs, {vcpus} asked for")
    if shadow is None:
        shadow = Shadow(info["nr_gfns"], config.seed)
    elif shadow.nr_gfns != info["nr_gfns"]:
        raise ValueError("shadow size does not match the domain")
    run = _Run(client, config, shadow, vcpus, stop if stop is not None else trio.Event())
    log.info(
        "guest.started",
        vcpus=vcpus,
        nr_gfns=shadow.nr_gfns,
        pattern=config.pattern,
        seed=config.seed,
        shadow_bytes=shadow.nbytes(),
    )
    report = await run.run()
    log.info(
        "guest.finished",
        ok=report.ok,
        ops=report.ops,
        verified=report.verified,
        integrity_errors=report.integrity_errors,
        stuck_vcpus=report.stuck_vcpus,
    )
    return report


def _first(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def verify_all(
    client: Client, shadow: Shadow, *, vcpus: int | None = None, stuck_after: float = 10.0
) -> GuestReport:
    """Only the verify pass: read every gfn and compare with `shadow` (no workload)."""
    config = GuestConfig(
        seed=shadow.seed, duration=0.0, balloon_every=0.0, stuck_after=stuck_after, vcpus=vcpus
    )
    return await run_workload(client, config, shadow=shadow)
