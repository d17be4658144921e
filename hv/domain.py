"""A guest domain: its p2m table, mem_event ring, vCPUs and pager attachment.

Every operation looks its rule up in `hv.rules` and carries out the rule's effect. All
state changes are synchronous (trio runs one task at a time), so an operation is atomic
with respect to every other connection; only guest accesses await, while their vCPU is
paused on a request or waits for a ring slot. The state and shared helpers are in
`hv.domain_state`, the operations in `hv.domain_pager` and `hv.domain_guest`; this module
assembles them and holds the domain's end and its views (status, invariants).
"""

from __future__ import annotations

from typing import Any

import trio

from protocol import Errno, MemEventFlag, P2MType
from transport.histogram import LatencyHistogram

from .domain_guest import GuestOps
from .domain_pager import PagerOps


class Domain(GuestOps, PagerOps):
    """Domain `domid`: `nr_gfns` gfns all `ram_rw` and zero-filled at creation."""

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
