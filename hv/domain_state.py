"""A domain's state, and the helpers all its operations share (rules, frames, ring requests).

Creation, the guards and rule lookup of `hv.rules`, frame moves, the requests put on the
ring but not yet told to the pager, and the pager peer they are told to. All state
changes are synchronous (trio runs one task at a time), so an operation is atomic with
respect to every other connection. The operations live in `hv.domain_pager` and
`hv.domain_guest`, assembled with the views in `hv.domain.Domain`.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import structlog
import trio

from protocol import PAGE_SIZE, P2MType, RingMode, make_event
from transport.histogram import LatencyHistogram

from .frames import NO_FRAME, FramePool
from .p2m import P2M
from .ring import MemRequest, Ring
from .rules import Rule, rules_for
from .trace import TraceRecorder
from .vcpu import VCpu

#: Pauses at least this long are logged (`vcpu.resumed`: what `xpemu report` draws on its
#: timeline); every pause is counted (per-vCPU pauses, the populate histogram). At 1 ms
#: nearly every populate was logged on a loaded machine: a JSON line (13.5 us of hv's CPU)
#: per page-in, 24 MB of hv.log an hour in a soak. A pause under 10 ms is not visible on
#: a timeline of seconds anyway.
PAUSE_LOG_MIN_S: Final = 0.01

log = structlog.get_logger("hv.domain")

Result = int | str  # 0 or an errno name, one per element of a batched reply


class Peer(Protocol):
    """What a domain needs of its pager's connection."""

    def send_event(self, msg: dict[str, Any]) -> None:
        """Queue an event without waiting (a peer that does not read is dropped)."""

    def fence(self) -> None:
        """Close the connection: a `takeover` replaced this pager."""


class DomainState:
    """A domain's state (see `hv.domain.Domain`) and the helpers its operations share."""

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
        # While a session's `resume` runs (hv.session_privcmd): the guest connections it
        # corked, by id, each with its uncork (the retried accesses' replies go out as one
        # write per guest).
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

    def _resumed(self, vcpu: VCpu, seconds: float) -> None:
        """A pause of `vcpu` ended after `seconds`: counted, and logged when it was long
        enough to show on a timeline (`xpemu report` draws the logged ones)."""
        if self.populate_rt is None:
            self.populate_rt = LatencyHistogram(highest_s=600.0, digits=2)
        self.populate_rt.add(seconds)
        if seconds >= PAUSE_LOG_MIN_S:
            self.log.info("vcpu.resumed", vcpu=vcpu.vcpu_id, paused_s=round(seconds, 6))
