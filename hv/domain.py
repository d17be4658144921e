"""A guest domain: its p2m table, mem_event ring, vCPUs and pager attachment.

Every operation looks its rule up in `hv.rules` and carries out the rule's effect here.
All state changes are synchronous (trio runs one task at a time), so an operation is
atomic with respect to every other connection; only guest accesses await, while their
vCPU is paused on a request or waits for a ring slot.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import structlog
import trio

from protocol import (
    FLAG_VCPU_PAUSED,
    PAGE_SIZE,
    Errno,
    MemEventFlag,
    P2MType,
    RingMode,
    make_event,
    pack_bits,
)
from transport.histogram import LatencyHistogram

from .frames import NO_FRAME, FramePool
from .p2m import P2M
from .ring import MemRequest, Ring
from .rules import OK, PAUSE, WAIT, Rule, rules_for
from .trace import TraceRecorder, outcome_of

#: Outcomes of `Domain.access_step`.
DONE: Final = "done"
PAUSED: Final = "paused"

#: Pauses at least this long are logged (`vcpu.resumed`); every pause is counted.
PAUSE_LOG_MIN_S: Final = 0.001
WAITING: Final = "wait"

log = structlog.get_logger("hv.domain")

Result = int | str  # 0 or an errno name, one per element of a batched reply


class GuestFault(Exception):
    """A guest access that ends with an errno instead of data."""

    def __init__(self, errno: Errno, msg: str) -> None:
        super().__init__(msg)
        self.errno = errno
        self.msg = msg


class Peer(Protocol):
    """What a domain needs of its pager's connection."""

    def send_event(self, msg: dict[str, Any]) -> None:
        """Queue an event without waiting (a peer that does not read is dropped)."""

    def fence(self) -> None:
        """Close the connection: a `takeover` replaced this pager."""


class VCpu:
    """One guest vCPU: at most one access at a time, paused on at most one request."""

    __slots__ = (
        "_cont",
        "_outcome",
        "_since",
        "_wake",
        "busy",
        "longest_s",
        "on_resume",
        "owner",
        "paused_s",
        "paused_seq",
        "pauses",
        "vcpu_id",
        "waiting",
    )

    def __init__(
        self, vcpu_id: int, on_resume: Callable[[VCpu, float], None] | None = None
    ) -> None:
        self.vcpu_id = vcpu_id
        # Pauses on requests, timed on trio's clock: how many, total and longest seconds.
        self.pauses = 0
        self.paused_s = 0.0
        self.longest_s = 0.0
        self._since: float | None = None  # trio time the current pause began
        self.on_resume = on_resume  # called with (vcpu, seconds) as each pause ends
        self.busy = False  # an access is pending
        self.paused_seq: int | None = None  # the request this vCPU is paused on
        self.waiting = False  # waits for a free ring slot
        self._wake: trio.Event | None = None
        self._outcome: Errno | None = None
        self._cont: Callable[[Errno | None], None] | None = None
        self.owner: object = None  # who set `_cont` (see `then`)

    def then(self, cont: Callable[[Errno | None], None], owner: object) -> None:
        """Instead of a task waiting: call `cont(outcome)` when unpaused (at once, from
        inside the operation that unpauses: the retried access needs no task switch)."""
        self._cont, self.owner = cont, owner

    def forget(self, owner: object) -> None:
        """`owner` is gone (its connection closed): drop its continuation and free the
        vCPU, as cancelling a waiting task does. The request stays on the ring."""
        if self._cont is not None and self.owner is owner:
            self._cont = self.owner = None
            self.paused_seq = self._wake = None
            self._end_pause()
            self.busy = False

    def pause(self, seq: int) -> None:
        """Pause on request `seq` (at once: `status` shows it, `unpause` may come before
        `wait_unpaused` is awaited)."""
        self.paused_seq = seq
        self._wake = trio.Event()
        self._outcome = None
        self._end_pause()  # a pause never left unended (a re-pause without unpause)
        self.pauses += 1
        self._since = trio.current_time()

    def _end_pause(self) -> None:
        """Count the pause that is ending (if one is open) in the totals."""
        if self._since is None:
            return
        dt = trio.current_time() - self._since
        self._since = None
        self.paused_s += dt
        self.longest_s = max(self.longest_s, dt)
        if self.on_resume is not None:
            self.on_resume(self, dt)

    def stats(self) -> dict[str, Any]:
        """Pauses so far: count, total and longest seconds (an open pause counts so far)."""
        now = trio.current_time() if self._since is not None else 0.0
        open_s = now - self._since if self._since is not None else 0.0
        return {
            "vcpu": self.vcpu_id,
            "paused": self.paused,
            "pauses": self.pauses,
            "paused_s": round(self.paused_s + open_s, 6),
            "longest_s": round(max(self.longest_s, open_s), 6),
        }

    async def wait_unpaused(self) -> Errno | None:
        """Wait until unpaused (None: retry the access) or released (an errno)."""
        assert self._wake is not None, "wait_unpaused without pause"
        try:
            await self._wake.wait()
            return self._outcome
        finally:
            self.paused_seq = None
            self._wake = None
            self._end_pause()

    def unpause(self, outcome: Errno | None = None) -> None:
        """Wake the paused access: None retries it, an errno ends it with that errno."""
        if self._cont is not None:
            cont, self._cont, self.owner = self._cont, None, None
            self.paused_seq = self._wake = None
            self._end_pause()
            cont(outcome)
            return
        if self._wake is not None:
            self._outcome = outcome
            self.paused_seq = None
            self._end_pause()
            self._wake.set()

    @property
    def paused(self) -> bool:
        """Paused on a request or waiting for a slot (what `status` lists)."""
        return self.paused_seq is not None or self.waiting


class Domain:
    """Domain `domid`: `nr_gfns` gfns all `ram_rw` and zero-filled at creation."""

    def __init__(
        self,
        domid: int,
        pool: FramePool,
        *,
        nr_gfns: int,
        vcpus: int,
        ring_size: int,
        ring_mode: str,
        mmio_gfns: Sequence[int] = (),
        target: int | None = None,
        instance: str,
    ) -> None:
        frames = pool.alloc_many(nr_gfns)
        if frames is None:
            raise MemoryError(f"{nr_gfns} frames wanted, {pool.free} free")
        self.domid = domid
        self.pool = pool
        self.p2m = P2M(frames, mmio_gfns)
        self.ring = Ring(ring_size)
        self.ring_mode = RingMode(ring_mode)
        self.vcpus = [VCpu(i, self._resumed) for i in range(vcpus)]
        # How long each populate kept its vCPU paused: the populate round trip as hv sees it
        # (made at the first pause: a domain that never pages costs no histogram).
        self.populate_rt: LatencyHistogram | None = None
        self.target = self.p2m.tot_pages if target is None else target
        self.instance = instance  # differs between runs (drawn by the Hypervisor)
        self.pager: Peer | None = None
        self.epoch = 0
        self.attached_at = 0.0  # trio time the current pager attached
        self.orphaned = False  # xen mode: the pager vanished without detaching
        self.destroyed = False
        self.counters: Counter[str] = Counter()
        self._unsent: list[MemRequest] = []  # put on the ring, not yet told to the pager
        # While a `resume` served by hv.server runs: the guest connections it corked, by id,
        # each with its uncork (its retried accesses' replies go out as one write per guest).
        self.held: dict[int, Callable[[], None]] | None = None
        self._slot_freed = trio.lowlevel.ParkingLot()
        # `xpemu up --record-trace`: one record per guest access (hv/trace.py). A vCPU's
        # flag is set when it claims an access and cleared by the access's first attempt,
        # so retries after a pause are not recorded again.
        self.recorder: TraceRecorder | None = None
        self._unrecorded = bytearray(vcpus)
        self.log = log.bind(domid=domid)
        self.log.info(
            "domain.created",
            nr_gfns=nr_gfns,
            vcpus=vcpus,
            mmio=len(set(mmio_gfns)),
            target=self.target,
            instance=self.instance,
        )

    # ------------------------------------------------------------------ helpers

    @property
    def nr_gfns(self) -> int:
        """Gfns in this domain's physmap range."""
        return self.p2m.nr_gfns

    def in_range(self, gfn: int) -> bool:
        """Whether gfn is below nr_gfns."""
        return 0 <= gfn < self.p2m.nr_gfns

    @property
    def waiters(self) -> int:
        """vCPUs waiting for a free ring slot."""
        return sum(v.waiting for v in self.vcpus)

    def _guard(
        self, name: str, gfn: int, data: bytes | None = None, req: MemRequest | None = None
    ) -> bool:
        """Guard `name` of `hv.rules` evaluated for gfn (see the table's legend)."""
        if name == "held":
            return gfn in self.p2m.holds
        if name == "frame":
            return self.p2m.frames[gfn] != NO_FRAME
        if name == "no_data":
            return data is None or len(data) != PAGE_SIZE
        if name == "no_mem":
            return self.pool.free == 0
        if name == "pending":
            return self.ring.populating(gfn)
        if name == "no_slot":
            return self.ring.full
        if name == "drop":
            return req is not None and req.drop
        raise AssertionError(f"unknown guard {name!r}")

    def _rule(
        self, op: str, gfn: int, data: bytes | None = None, req: MemRequest | None = None
    ) -> Rule:
        # `hv.rules.lookup`, inlined: this runs for every gfn of every operation. A guard is
        # evaluated only for the rows actually tried (`pending` scans the ring). Calling
        # lookup with the guard's arguments instead cost 30-45% more per 64-gfn batch
        # (nominate 83 -> 120 µs in-process), hence the copy of its four lines.
        for rule in rules_for(op, self.p2m.type(gfn)):
            if not rule.when or self._guard(rule.when, gfn, data, req):
                return rule
        raise AssertionError(f"no rule for {op} from {self.p2m.type(gfn).name}")

    def _move(self, rule: Rule, gfn: int) -> None:
        """Apply a rule's `dst` with no change of frame."""
        if rule.dst is not None:
            self.p2m.set_type(gfn, rule.dst)

    def _free_frame(self, gfn: int, dst: P2MType, freed: array[int] | None = None) -> None:
        frame = self.p2m.frames[gfn]
        self.p2m.set_backing(gfn, dst, NO_FRAME)
        if frame != NO_FRAME:
            if freed is None:
                self.pool.release(frame)
            else:
                freed.append(frame)

    def _alloc(self, gfn: int, dst: P2MType, data: bytes | None) -> None:
        frame = self.pool.alloc()
        assert frame is not None, "the no_mem guard lets no allocation fail"
        if data is not None:
            self.pool.write(frame, 0, data)
        self.p2m.set_backing(gfn, dst, frame)

    def _put(self, gfn: int, vcpu_id: int, flags: int, src: P2MType) -> MemRequest:
        req = self.ring.put(gfn, vcpu_id, flags, src)
        self._unsent.append(req)
        self.counters["requests"] += 1
        self.log.debug(
            "ring.put", seq=req.seq, gfn=gfn, vcpu_id=vcpu_id, flags=flags, p2mt=src.name
        )
        return req

    def _slot_released(self) -> None:
        # Waiters re-evaluate their access from the top: the gfn may have changed meanwhile.
        self._slot_freed.unpark_all()

    def flush_events(self) -> None:
        """Tell the pager about every request put since the last flush (one `mem_event`)."""
        if not self._unsent:
            return
        reqs, self._unsent = self._unsent, []
        if self.pager is not None:
            self.pager.send_event(make_event("mem_event", reqs=[r.wire() for r in reqs]))
        # With no pager the requests wait on the ring: the next hello redelivers them all.

    # ------------------------------------------------------------------ pager attachment

    def attach_pager(self, peer: Peer, *, takeover: bool) -> Errno | None:
        """Make `peer` this domain's pager; an errno when refused (PROTOCOL.md §4, §8)."""
        if self.orphaned:
            self.log.warning("pager.refused", reason="ring orphaned (xen mode)")
            return Errno.EBUSY
        if self.pager is not None:
            if not takeover:
                self.log.info("pager.refused", reason="a pager is attached")
                return Errno.EBUSY
            old, self.pager = self.pager, None
            self.log.warning("pager.fenced", epoch=self.epoch)
            old.fence()
        self.pager = peer
        self.epoch += 1
        self.attached_at = trio.current_time()
        self.counters["pager_attaches"] += 1
        self.log.info("pager.attached", epoch=self.epoch, unanswered=self.ring.used)
        return None

    def greet_pager(self) -> None:
        """After the hello reply: the target, then every unanswered request, oldest first."""
        assert self.pager is not None
        self.pager.send_event(make_event("target", tot_pages=self.target))
        self._unsent.clear()  # all of them go out now
        unanswered = self.ring.unanswered()
        if unanswered:
            self.log.info("ring.redelivered", count=len(unanswered), epoch=self.epoch)
            self.pager.send_event(make_event("mem_event", reqs=[r.wire() for r in unanswered]))

    def pager_lost(self, peer: Peer) -> None:
        """`peer`'s connection ended without a detach."""
        if self.pager is not peer:
            return
        self.pager = None
        if self.ring_mode is RingMode.xen and not self.destroyed:
            self.orphaned = True
        self.counters["pager_losses"] += 1
        self.log.warning(
            "pager.lost",
            epoch=self.epoch,
            unanswered=self.ring.used,
            orphaned=self.orphaned,
        )

    def detach(self, peer: Peer | None) -> Errno | None:
        """Disable the ring cleanly: the pager's own `detach`, or control's (peer None)."""
        if peer is not None and self.pager is not peer:
            return Errno.ENODEV
        if peer is None and self.pager is not None:
            return Errno.EBUSY  # a live pager detaches itself (or is replaced by takeover)
        if self.ring.used or self.waiters or self.p2m.paged_pages:
            return Errno.EBUSY
        self.pager = None
        self.orphaned = False
        self.log.info("pager.detached", epoch=self.epoch, by="pager" if peer else "control")
        return None

    def set_target(self, tot_pages: int) -> None:
        """New target: the pager is told at once (the xenstore watch)."""
        self.target = tot_pages
        self.log.info("target.set", tot_pages=tot_pages)
        if self.pager is not None:
            self.pager.send_event(make_event("target", tot_pages=tot_pages))

    # ------------------------------------------------------------------ pager operations

    def nominate(self, gfns: Sequence[int]) -> list[Result]:
        """ram_rw -> paging_out for each gfn (p2m_mem_paging_nominate)."""
        return [self._simple("nominate", g, "page.nominated") for g in gfns]

    def evict(self, gfns: Sequence[int]) -> list[Result]:
        """paging_out -> paged, frame freed (p2m_mem_paging_evict)."""
        # The frames go back together at the end: one madvise per run of frames, not one
        # per page (a batch of victims swept in gfn order mostly owns a run of frames).
        freed = array("I")
        out = [self._simple("evict", g, "page.evicted", freed) for g in gfns]
        self.pool.release_many(freed)
        return out

    def mark_broken(self, gfns: Sequence[int]) -> list[Result]:
        """Frameless paging gfns whose copy the pager lost -> broken."""
        out = []
        for g in gfns:
            res = self._simple("mark_broken", g, "page.broken")
            if res == OK:
                self.log.error("page.broken", gfn=g)
            out.append(res)
        return out

    def _simple(self, op: str, gfn: int, event: str, freed: array[int] | None = None) -> Result:
        """Ops whose effects are a type change and maybe freeing the frame (into `freed`,
        when given, for the caller to release)."""
        if not self.in_range(gfn):
            return Errno.EINVAL
        rule = self._rule(op, gfn)
        if rule.result != OK:
            return rule.result
        if rule.effect == "free_frame":
            assert rule.dst is not None
            self._free_frame(gfn, rule.dst, freed)
        else:
            self._move(rule, gfn)
        self.counters[event] += 1
        self.log.debug(event, gfn=gfn)
        return OK

    def prep(self, gfns: Sequence[int], pages: Sequence[bytes | None]) -> list[Result]:
        """Allocate and load populated (or unrequested paged) gfns (p2m_mem_paging_prep)."""
        out: list[Result] = []
        for g, data in zip(gfns, pages, strict=True):
            if not self.in_range(g):
                out.append(Errno.EINVAL)
                continue
            rule = self._rule("prep", g, data)
            if rule.result == OK and rule.dst is not None:
                if rule.effect == "alloc_load":
                    self._alloc(g, rule.dst, data)
                else:
                    self._move(rule, g)
                self.counters["page.prepped"] += 1
                self.log.debug("page.prepped", gfn=g, to=rule.dst.name)
            out.append(rule.result)
        return out

    def resume(self, rsps: Sequence[dict[str, Any]]) -> list[Result]:
        """Consume responses by `seq` (p2m_mem_paging_resume / vm_event_resume)."""
        out: list[Result] = []
        for rsp in rsps:
            req = self.ring.get(rsp["seq"])
            if req is None:
                out.append(Errno.ENOENT)
                continue
            if rsp["gfn"] != req.gfn or rsp["vcpu_id"] != req.vcpu_id:
                self.log.warning(
                    "resume.mismatch",
                    seq=req.seq,
                    gfn=rsp["gfn"],
                    vcpu_id=rsp["vcpu_id"],
                    recorded_gfn=req.gfn,
                    recorded_vcpu_id=req.vcpu_id,
                )
                out.append(Errno.EINVAL)
                continue
            rule = self._rule("resume", req.gfn, req=req)
            assert rule.effect == "complete"
            self.ring.consume(req.seq)
            self._move(rule, req.gfn)
            if req.flags & FLAG_VCPU_PAUSED and not req.drop:
                vcpu = self.vcpus[req.vcpu_id]
                if vcpu.paused_seq == req.seq:
                    vcpu.unpause()
            self.counters["page.resumed"] += 1
            self.log.debug("page.resumed", seq=req.seq, gfn=req.gfn, vcpu_id=req.vcpu_id)
            out.append(OK)
            self._slot_released()
        return out

    def map(self, gfns: Sequence[int], *, hold: bool, holder: dict[int, int]) -> list[bytes | str]:
        """Copies of pages for a foreign mapper; a paged gfn is populated (FOREIGN)."""
        out: list[bytes | str] = []
        for g in gfns:
            if not self.in_range(g):
                out.append(Errno.EINVAL)
                continue
            src = self.p2m.type(g)
            rule = self._rule("map", g)
            if rule.effect == "copy":
                out.append(self.pool.read(self.p2m.frames[g]))
                if hold:
                    self.p2m.hold(g)
                    holder[g] = holder.get(g, 0) + 1
                continue
            if rule.effect == "populate":
                req = self._put(g, -1, rule.flags, src)
                self._move(rule, g)
                self.counters["page.populated"] += 1
                self.log.debug("page.populated", gfn=g, seq=req.seq, foreign=True)
            assert isinstance(rule.result, str)
            out.append(rule.result)
        return out

    def unmap(self, gfns: Sequence[int], holder: dict[int, int]) -> list[Result]:
        """Drop holds taken by `map` on this connection (ENOENT for a gfn it does not hold)."""
        out: list[Result] = []
        for g in gfns:
            if not self.in_range(g):
                out.append(Errno.EINVAL)
            elif holder.get(g, 0) == 0:
                out.append(Errno.ENOENT)
            else:
                holder[g] -= 1
                if holder[g] == 0:
                    del holder[g]
                self.p2m.unhold(g)
                out.append(OK)
        return out

    def release_holds(self, holder: dict[int, int]) -> None:
        """A mapper's connection closed: its mappings go away."""
        if self.destroyed:
            return
        for g, n in holder.items():
            for _ in range(n):
                self.p2m.unhold(g)
        holder.clear()

    def audit(self, start: int, count: int) -> dict[str, Any]:
        """Types and has-frame bitmap of [start, start+count), and the counters."""
        return {
            "types": bytes(self.p2m.types[start : start + count]),
            "frames": pack_bits(self.p2m.has_frame_flags(start, count)),
            "tot_pages": self.p2m.tot_pages,
            "target": self.target,
            "paged_pages": self.p2m.paged_pages,
        }

    def accessed(self, start: int, count: int, clear: bool) -> bytes:
        """Accessed bits of [start, start+count), cleared afterwards when asked."""
        bits = pack_bits(self.p2m.accessed[start : start + count])
        if clear:
            self.p2m.accessed[start : start + count] = bytes(count)
        return bits

    # ------------------------------------------------------------------ guest operations

    def decrease_reservation(self, gfns: Sequence[int]) -> list[Result]:
        """Balloon out (XENMEM_decrease_reservation); paging gfns also get DROP_PAGE."""
        out: list[Result] = []
        for g in gfns:
            if not self.in_range(g):
                out.append(Errno.EINVAL)
                continue
            src = self.p2m.type(g)
            rule = self._rule("decrease_reservation", g)
            if rule.result == OK:
                assert rule.dst is not None
                if rule.effect in ("free_frame", "drop_page"):
                    self._free_frame(g, rule.dst)
                else:
                    self._move(rule, g)
                if rule.effect == "drop_page":
                    req = self._put(g, -1, MemEventFlag.DROP_PAGE, src)
                    self.log.debug("page.dropped", gfn=g, seq=req.seq, p2mt=src.name)
                    for vcpu in self.vcpus:
                        seq = vcpu.paused_seq
                        paused_on = self.ring.get(seq) if seq is not None else None
                        if paused_on is not None and paused_on.gfn == g:
                            vcpu.unpause(Errno.EFAULT)
                self.counters["page.ballooned_out"] += 1
            out.append(rule.result)
        return out

    def increase_reservation(self, gfns: Sequence[int]) -> list[Result]:
        """Balloon in (XENMEM_populate_physmap): an invalid gfn gets a zeroed frame."""
        out: list[Result] = []
        for g in gfns:
            if not self.in_range(g):
                out.append(Errno.EINVAL)
                continue
            rule = self._rule("increase_reservation", g)
            if rule.result == OK:
                assert rule.dst is not None
                self._alloc(g, rule.dst, None)
                self.counters["page.ballooned_in"] += 1
            out.append(rule.result)
        return out

    def claim_vcpu(self, vcpu_id: int) -> Errno | None:
        """Start an access on a vCPU: EINVAL out of range, EBUSY while one is pending."""
        if not 0 <= vcpu_id < len(self.vcpus):
            return Errno.EINVAL
        vcpu = self.vcpus[vcpu_id]
        if vcpu.busy:
            return Errno.EBUSY
        vcpu.busy = True
        if self.recorder is not None:
            self._unrecorded[vcpu_id] = 1
        return None

    def access_step(
        self, vcpu_id: int, op: str, gfn: int, off: int, length: int, data: bytes | None
    ) -> tuple[str, bytes | None]:
        """One attempt of a claimed vCPU's access, never waiting.

        ("done", bytes read or None for a write); ("paused", None) after a populate: the
        vCPU is paused on its request, which waits in `flush_events` for the caller to
        send; ("wait", None): the ring is full. GuestFault with the errno otherwise. The
        vCPU stays claimed: `access` (or the caller, when done) releases it."""
        if self.destroyed:
            raise GuestFault(Errno.ESRCH, f"domain {self.domid} was destroyed")
        self.p2m.accessed[gfn] = 1
        rule = self._rule(op, gfn)
        if self.recorder is not None and self._unrecorded[vcpu_id]:
            self._unrecorded[vcpu_id] = 0
            self.recorder.record(gfn, vcpu_id, op == "write", outcome_of(rule.result))
        if rule.result == OK:
            frame = self.p2m.frames[gfn]
            if op == "read":
                return DONE, self.pool.read(frame, off, length)
            assert data is not None
            self.pool.write(frame, off, data)
            return DONE, None
        if rule.result == WAIT:
            return WAITING, None
        src = self.p2m.type(gfn)
        if rule.result == PAUSE:
            flags = rule.flags | FLAG_VCPU_PAUSED
            req = self._put(gfn, vcpu_id, flags, src)
            self._move(rule, gfn)
            self.counters["page.populated"] += 1
            self.log.debug("page.populated", gfn=gfn, seq=req.seq, vcpu=vcpu_id)
            self.vcpus[vcpu_id].pause(req.seq)
            # Not told to the pager yet: the caller flushes (a session once per burst of
            # requests, so that the requests of vCPUs faulting together share one event).
            return PAUSED, None
        assert isinstance(rule.result, str)
        raise GuestFault(Errno(rule.result), f"gfn {gfn} is {src.name}")

    async def access(
        self,
        vcpu_id: int,
        op: str,
        gfn: int,
        off: int,
        length: int,
        data: bytes | None,
        *,
        first: str | None = None,
    ) -> bytes | None:
        """A claimed vCPU reads or writes gfn: populates and pauses as often as it takes.

        Returns the bytes read (None for a write); GuestFault with the errno otherwise.
        The vCPU is released (not busy) when this returns, raises or is cancelled.
        `first`: the outcome of an `access_step` the caller already made.
        """
        vcpu = self.vcpus[vcpu_id]
        waited = False
        try:
            while True:
                if first is None:
                    step, value = self.access_step(vcpu_id, op, gfn, off, length, data)
                else:
                    step, value, first = first, None, None
                    if step == WAITING and not self.ring.full:
                        # A slot was freed between the caller's attempt and this task's
                        # start: its wake-up found nobody parked. Try again now.
                        continue
                if step == DONE:
                    return value
                if step == PAUSED:
                    self.flush_events()  # a task: no session flushes after it
                if step == WAITING:
                    if not waited:  # once per access: a waiter may be woken many times
                        waited = True
                        self.counters["ring.full"] += 1
                        self.log.info("ring.full", vcpu=vcpu_id, gfn=gfn, size=self.ring.size)
                    vcpu.waiting = True
                    try:
                        await self._slot_freed.park()
                    finally:
                        vcpu.waiting = False
                    continue
                outcome = await vcpu.wait_unpaused()
                if outcome is not None:
                    raise GuestFault(outcome, f"gfn {gfn}: released ({outcome})")
        finally:
            vcpu.busy = False

    # ------------------------------------------------------------------ lifecycle, views

    def destroy(self) -> None:
        """Free every frame; paused and waiting vCPUs end with ESRCH."""
        self.destroyed = True
        self.pool.release_many(self.p2m.frames)
        self.p2m.frames = type(self.p2m.frames)("I")
        self.pager = None
        self.orphaned = False
        for vcpu in self.vcpus:
            vcpu.unpause(Errno.ESRCH)
        self._slot_freed.unpark_all()
        self.log.info("domain.destroyed")

    def _resumed(self, vcpu: VCpu, seconds: float) -> None:
        """A pause of `vcpu` ended after `seconds`: counted, and logged when it was long
        enough to show on a timeline (`xpemu report` draws the logged ones)."""
        if self.populate_rt is None:
            self.populate_rt = LatencyHistogram(highest_s=600.0, digits=2)
        self.populate_rt.add(seconds)
        if seconds >= PAUSE_LOG_MIN_S:
            self.log.info("vcpu.resumed", vcpu=vcpu.vcpu_id, paused_s=round(seconds, 6))

    def vcpu_stats(self) -> dict[str, Any]:
        """Per vCPU pauses (count, total and longest seconds) and the round-trip histogram."""
        return {
            "vcpus": [v.stats() for v in self.vcpus],
            "populate_ms": (self.populate_rt or LatencyHistogram(1.0)).summary_ms(),
            "populate_hist_ms": self.populate_rt.buckets_ms() if self.populate_rt else [],
        }

    def status(self) -> dict[str, Any]:
        """This domain's entry in the control `status` reply."""
        return {
            "domid": self.domid,
            "nr_gfns": self.nr_gfns,
            "vcpus": len(self.vcpus),
            "tot_pages": self.p2m.tot_pages,
            "target": self.target,
            "paged_pages": self.p2m.paged_pages,
            "counts": {t.name: self.p2m.counts[t] for t in P2MType},
            "ring": {"size": self.ring.size, "used": self.ring.used, "waiters": self.waiters},
            "pager": {
                "attached": self.pager is not None,
                "epoch": self.epoch,
                "orphaned": self.orphaned,
                "uptime_s": round(trio.current_time() - self.attached_at, 3)
                if self.pager is not None
                else 0.0,
            },
            "paused_vcpus": [v.vcpu_id for v in self.vcpus if v.paused],
            "vcpu_stats": [v.stats() for v in self.vcpus],
        }

    def violations(self) -> list[str]:
        """Invariants 1 (per gfn), 2 and 3 of DESIGN.md for this domain."""
        prefix = f"domain {self.domid}: "
        out = self.p2m.violations(prefix)
        if self.ring.used > self.ring.size:
            out.append(f"{prefix}ring uses {self.ring.used} of {self.ring.size} slots")
        for vcpu in self.vcpus:
            if vcpu.paused_seq is None:
                continue
            req = self.ring.get(vcpu.paused_seq)
            if req is None:
                out.append(
                    f"{prefix}vCPU {vcpu.vcpu_id} is paused on seq {vcpu.paused_seq}, "
                    "which is not on the ring"
                )
            elif req.vcpu_id != vcpu.vcpu_id or not req.flags & MemEventFlag.VCPU_PAUSED:
                out.append(
                    f"{prefix}vCPU {vcpu.vcpu_id} is paused on seq {req.seq}, "
                    f"a request of vCPU {req.vcpu_id} flags {req.flags}"
                )
        return out
