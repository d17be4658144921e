"""The replacement policy interface the pager drives, and a base class that tracks paged gfns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

Accessed = Callable[[int, int], Awaitable[bytes]]
"""`await accessed(start, count)`: LSB-first bitmap of accessed bits, cleared as read."""


class Policy(Protocol):
    """What the pager needs from a replacement policy."""

    name: str

    async def choose(self, n: int, skip: Callable[[int], bool]) -> list[int]:
        """Up to `n` distinct resident gfns to nominate, none for which `skip(gfn)` holds."""
        ...

    def paged_out(self, gfn: int) -> None:
        """`gfn` was evicted."""

    def paged_in(self, gfn: int, *, mru: bool = True) -> None:
        """`gfn` came back in; `mru` when a guest touch brought it (it is recently used),
        false for a proactive page-in (Xen's policy_notify_paged_in_nomru)."""

    def dropped(self, gfn: int) -> None:
        """`gfn` left the paging path without a page-in (balloon, lost, nominate refused)."""


class PolicyBase:
    """Keeps `paged`, one byte per gfn (1: paged out by us); a policy may build on it."""

    name = "base"

    def __init__(self, nr_gfns: int) -> None:
        self.nr_gfns = nr_gfns
        self.paged = bytearray(nr_gfns)  # 1 = paged out by us (Xen's `bitmap`)

    def paged_out(self, gfn: int) -> None:
        self.paged[gfn] = 1

    def dropped(self, gfn: int) -> None:
        self.paged[gfn] = 0
