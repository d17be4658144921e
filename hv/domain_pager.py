"""A domain's pager-side operations: attaching its pager, and what the pager and mappers do.

The pager's attachment (hello, takeover, loss, detach, target) and the operations of the
pager and of foreign mappers (nominate, evict, prep, resume, map, audit, ...), each looked
up in `hv.rules`.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Sequence
from typing import Any, Final, cast

import trio

from protocol import FLAG_VCPU_PAUSED, Errno, RingMode, make_event, pack_bits

from .domain_state import DomainState, Peer, Result
from .frames import NO_FRAME
from .rules import OK, Rule, rows_by_code, unheld_rules

#: By type code: whether `map` copies a gfn of that type whatever its guards say (its first
#: row has no guard and copies).
_COPIED: Final = tuple(
    bool(rows) and rows[0].when == "" and rows[0].effect == "copy" for rows in rows_by_code("map")
)


def _debug_on(log: Any) -> bool:
    """Whether `log` writes debug lines (a logger that cannot tell: yes)."""
    enabled = getattr(log, "is_enabled_for", None)
    return True if enabled is None else bool(enabled(logging.DEBUG))


class PagerOps(DomainState):
    """What the pager and foreign mappers do to a domain."""

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
        return self._simple_many("nominate", gfns, "page.nominated")

    def evict(self, gfns: Sequence[int]) -> list[Result]:
        """paging_out -> paged, frame freed (p2m_mem_paging_evict)."""
        # The frames go back together at the end: one madvise per run of frames, not one
        # per page (a batch of victims swept in gfn order mostly owns a run of frames).
        freed = array("I")
        out = self._simple_many("evict", gfns, "page.evicted", freed)
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

    def _simple_many(
        self, op: str, gfns: Sequence[int], event: str, freed: array[int] | None = None
    ) -> list[Result]:
        """`_simple` of each gfn in order, for ops whose guards look at the gfn alone
        (nominate, evict: `held`). When the gfns are distinct and in range, no gfn's change
        can alter another's rule, so every rule is looked up first, then each rule's
        changes are made for all its gfns at once: the same results and the same table as
        one by one. Other lists go one by one (a gfn named twice sees its first change)."""
        p2m = self.p2m
        n = len(gfns)
        if not n or min(gfns) < 0 or max(gfns) >= p2m.nr_gfns or len(set(gfns)) != n:
            return [self._simple(op, g, event, freed) for g in gfns]
        unheld = unheld_rules(op)
        rules: list[Rule | None] = [unheld[t] for t in p2m.types_of(gfns)]
        holds = p2m.holds
        kinds = set(map(id, rules))
        if holds or id(None) in kinds:  # rare: a held gfn, or a type whose guards decide
            for i, g in enumerate(gfns):
                if rules[i] is None or g in holds:
                    rules[i] = self._rule(op, g)
            kinds = set(map(id, rules))
        done = cast(list[Rule], rules)
        out: list[Result] = [r.result for r in done]
        if len(kinds) == 1:  # the common case: one rule for the whole batch
            groups = [(done[0], gfns)]
        else:
            by_rule: dict[int, tuple[Rule, list[int]]] = {}
            for g, r in zip(gfns, done, strict=True):
                by_rule.setdefault(id(r), (r, []))[1].append(g)
            groups = list(by_rule.values())
        moved = False
        for rule, moving in groups:
            if rule.result != OK:
                continue
            assert rule.dst is not None
            if rule.effect == "free_frame":
                old = p2m.drop_frames(moving, rule.dst)
                if old.count(NO_FRAME):
                    old = array("I", [f for f in old if f != NO_FRAME])
                if freed is None:
                    self.pool.release_many(old)
                else:
                    freed.extend(old)
            else:
                assert not rule.effect, rule
                p2m.set_types(moving, rule.dst)
            self.counters[event] += len(moving)
            moved = True
        if moved and _debug_on(self.log):
            for g, res in zip(gfns, out, strict=True):
                if res == OK:
                    self.log.debug(event, gfn=g)
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

    def map(
        self, gfns: Sequence[int], *, hold: bool, holder: dict[int, int], copy: bool = True
    ) -> list[bytes | memoryview | str]:
        """Copies of pages for a foreign mapper; a paged gfn is populated (FOREIGN).

        `copy` False: where every gfn is copied, the pages are views of the frames, valid
        until the domain next changes (the session encodes its reply at once)."""
        p2m = self.p2m
        frames, nr = p2m.frames, p2m.nr_gfns
        copied = _COPIED
        # The common case, a batch the pager nominated: every gfn's type alone says "copy"
        # (a copy changes nothing, so no gfn's rule depends on another's): the pages are
        # read in one go. Otherwise gfn by gfn, below.
        if (
            gfns
            and min(gfns) >= 0
            and max(gfns) < nr
            and all(map(copied.__getitem__, p2m.types_of(gfns)))
        ):
            pages = self.pool.read_many([frames[g] for g in gfns], copy=copy)
            if hold:
                for g in gfns:
                    p2m.hold(g)
                    holder[g] = holder.get(g, 0) + 1
            return list(pages)
        out: list[bytes | memoryview | str] = []
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
