"""A domain's guest-side operations: vCPU accesses (populate, pause, retry) and the balloon.

A vCPU's access populates and pauses as often as it takes; the balloon driver gives gfns
back and takes them again. Each looks its rule up in `hv.rules`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from protocol import FLAG_VCPU_PAUSED, Errno, MemEventFlag

from .domain_state import DomainState, Result
from .rules import OK, PAUSE, WAIT
from .trace import outcome_of

#: Outcomes of `Domain.access_step`.
DONE: Final = "done"
PAUSED: Final = "paused"
WAITING: Final = "wait"


class GuestFault(Exception):
    """A guest access that ends with an errno instead of data."""

    def __init__(self, errno: Errno, msg: str) -> None:
        super().__init__(msg)
        self.errno = errno
        self.msg = msg


class GuestOps(DomainState):
    """What the guest's vCPUs and its balloon driver do to a domain."""

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
