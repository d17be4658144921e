"""The mem_event ring: `size` slots, each held by a request until its response is consumed.

Sans-IO: the domain decides who waits for a slot and who is told about a put.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol import FLAG_DROP_PAGE, P2MType


@dataclass(frozen=True, slots=True)
class MemRequest:
    """One request on the ring (Xen's `mem_event_request_t`)."""

    seq: int
    gfn: int
    vcpu_id: int  # -1 when no guest vCPU made it (FOREIGN, DROP_PAGE)
    flags: int
    p2mt: P2MType  # the gfn's type before the request changed it

    def wire(self) -> dict[str, Any]:
        """The request as it travels in a `mem_event` event."""
        return {
            "seq": self.seq,
            "gfn": self.gfn,
            "vcpu_id": self.vcpu_id,
            "flags": self.flags,
            "p2mt": self.p2mt.name,
        }

    @property
    def drop(self) -> bool:
        """Whether this is a DROP_PAGE request (it populates nothing)."""
        return bool(self.flags & FLAG_DROP_PAGE)


class Ring:
    """Slots keyed by `seq`; dict order is put order, so iteration is oldest first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots: dict[int, MemRequest] = {}
        self._next_seq = 1  # unique per domain for the life of hv (PROTOCOL.md §6)

    @property
    def used(self) -> int:
        """Slots held by unanswered requests."""
        return len(self._slots)

    @property
    def full(self) -> bool:
        """Whether no slot is free."""
        return len(self._slots) >= self.size

    def put(self, gfn: int, vcpu_id: int, flags: int, p2mt: P2MType) -> MemRequest:
        """Take a free slot for a new request (the caller has checked `full`)."""
        assert not self.full, "put on a full ring"
        req = MemRequest(self._next_seq, gfn, vcpu_id, int(flags), p2mt)
        self._next_seq += 1
        self._slots[req.seq] = req
        return req

    def get(self, seq: int) -> MemRequest | None:
        """The unanswered request `seq`, if any."""
        return self._slots.get(seq)

    def consume(self, seq: int) -> MemRequest:
        """Free the slot of request `seq` (which must be unanswered)."""
        return self._slots.pop(seq)

    def unanswered(self) -> list[MemRequest]:
        """Every unanswered request, oldest first."""
        return list(self._slots.values())

    def populating(self, gfn: int) -> bool:
        """Whether an unanswered request other than DROP_PAGE names gfn."""
        return any(r.gfn == gfn and not r.drop for r in self._slots.values())
