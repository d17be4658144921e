"""Victim selection: `xenpaging` (the original round-robin) and `clock` (second chance).

A policy knows which gfns are paged out (the pager tells it) and picks resident gfns to
nominate. It never talks to hv itself except, for `clock`, through the `accessed`
callable it is given (the EPT accessed-bit analogue, PROTOCOL.md §6).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from protocol import MAX_AUDIT_COUNT

#: Xen's xenpaging keeps the last 16 Ki paged-in gfns out of the victim sweep.
XEN_MRU_SIZE: Final = 1024 * 16

#: gfns whose accessed bits `clock` fetches (and clears) in one `accessed` call, at least.
#: Bits are judged when the hand reaches them, so a large window judges on stale bits: a
#: call fetches max(CLOCK_WINDOW, 2 * n) for a batch of n victims.
CLOCK_WINDOW: Final = 64

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


class _Base:
    name = "base"

    def __init__(self, nr_gfns: int) -> None:
        self.nr_gfns = nr_gfns
        self.paged = bytearray(nr_gfns)  # 1 = paged out by us (Xen's `bitmap`)

    def paged_out(self, gfn: int) -> None:
        self.paged[gfn] = 1

    def dropped(self, gfn: int) -> None:
        self.paged[gfn] = 0


class XenpagingPolicy(_Base):
    """Xen's policy_default.c: sweep round-robin from nr_gfns/2, skipping paged gfns and a
    ring of the most recently paged-in ones (the MRU list)."""

    name = "xenpaging"

    def __init__(self, nr_gfns: int, mru_size: int | None = None) -> None:
        super().__init__(nr_gfns)
        # Xen's 16 Ki list would cover a whole small test domain: cap it at a quarter.
        self.mru_size = max(
            1, mru_size if mru_size is not None else min(XEN_MRU_SIZE, nr_gfns // 4)
        )
        self._mru: list[int] = []
        self._i_mru = 0
        self._in_mru = bytearray(nr_gfns)
        # "Start in the middle to avoid paging during BIOS startup" (policy_default.c).
        self.current = nr_gfns // 2

    def paged_in(self, gfn: int, *, mru: bool = True) -> None:
        self.paged[gfn] = 0
        if not mru:
            return
        if len(self._mru) < self.mru_size:
            self._mru.append(gfn)
        else:
            old = self._mru[self._i_mru]
            self._in_mru[old] = 0
            self._mru[self._i_mru] = gfn
            self._i_mru = (self._i_mru + 1) % self.mru_size
        self._in_mru[gfn] = 1

    async def choose(self, n: int, skip: Callable[[int], bool]) -> list[int]:
        out: list[int] = []
        nr = self.nr_gfns
        for _ in range(nr):
            if len(out) >= n:
                break
            self.current = (self.current + 1) % nr
            g = self.current
            if self.paged[g] or self._in_mru[g] or skip(g):
                continue
            out.append(g)
        if len(out) < n:
            # Every candidate is in the MRU list. Xen's xenpaging would stall here (poll and
            # retry); we take MRU gfns rather than miss the target.
            for g in range(nr):
                if len(out) >= n:
                    break
                if self._in_mru[g] and not self.paged[g] and not skip(g) and g not in out:
                    out.append(g)
        return out


class ClockPolicy(_Base):
    """Second chance on the accessed bits: the hand skips (and clears) accessed gfns."""

    name = "clock"

    def __init__(self, nr_gfns: int, accessed: Accessed, window: int = CLOCK_WINDOW) -> None:
        super().__init__(nr_gfns)
        self._accessed = accessed
        self.window = max(8, min(window, MAX_AUDIT_COUNT, nr_gfns))
        self._fetch = self.window
        self.hand = 0
        self._bits = b""
        self._bits_start = 0
        self._bits_len = 0
        self._last = -1  # last gfn examined: a wrap of the hand refetches the window

    def paged_in(self, gfn: int, *, mru: bool = True) -> None:
        self.paged[gfn] = 0

    async def _bit(self, g: int) -> bool:
        # Bits are fetched (and cleared in hv) one window at a time and consumed as the
        # hand passes: a gfn is never cleared without being examined.
        if g <= self._last or not self._bits_start <= g < self._bits_start + self._bits_len:
            count = min(self._fetch, self.nr_gfns - g)
            self._bits = await self._accessed(g, count)
            self._bits_start, self._bits_len = g, count
        self._last = g
        i = g - self._bits_start
        return bool(self._bits[i >> 3] >> (i & 7) & 1)

    async def choose(self, n: int, skip: Callable[[int], bool]) -> list[int]:
        out: list[int] = []
        nr = self.nr_gfns
        self._fetch = min(max(self.window, 2 * n), MAX_AUDIT_COUNT, nr)
        # Two turns at most: after one, every examined bit has been cleared.
        for _ in range(2 * nr):
            if len(out) >= n:
                break
            g = self.hand
            self.hand = (g + 1) % nr
            if self.paged[g] or skip(g):
                continue
            if await self._bit(g):
                continue  # second chance: the bit is now clear in hv
            out.append(g)
        return out


def make_policy(
    name: str, nr_gfns: int, accessed: Accessed, *, mru_size: int | None = None
) -> XenpagingPolicy | ClockPolicy:
    """The policy called `name` ("xenpaging" or "clock"); ValueError otherwise."""
    if name == "xenpaging":
        return XenpagingPolicy(nr_gfns, mru_size)
    if name == "clock":
        return ClockPolicy(nr_gfns, accessed)
    raise ValueError(f"unknown policy {name!r}: xenpaging or clock")


POLICIES: Final = ("xenpaging", "clock")
