"""Victim selection: `xenpaging` (the original round-robin), `clock` (second chance) and
`aging` (a per-gfn reference count from periodic scans of the accessed bits).

A policy knows which gfns are paged out (the pager tells it) and picks resident gfns to
nominate. It never talks to hv itself except, for `clock` and `aging`, through the
`accessed` callable it is given (the EPT accessed-bit analogue, PROTOCOL.md §6). A policy
with an `async def scan()` wants it called periodically (the pager's `--scan-ms`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from protocol import MAX_AUDIT_COUNT, unpack_bits

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


#: `aging`'s counters: 7 bits per gfn (the 8th marks a paged-out gfn), saturating.
AGING_MAX: Final = 127

#: `aging` halves every counter after this many scans: the memory of its frequency
#: estimate (measured in BENCHMARKS.md "Policy quality").
AGING_DECAY_SCANS: Final = 64

_PAGED_FLAG = 0x80
_ONE: Final = b"\x01"
_LEVELS: Final = [bytes((v,)) for v in range(256)]


def _halve_table() -> bytes:
    # Halve the 7-bit count, keep the paged flag.
    return bytes((b & _PAGED_FLAG) | ((b & AGING_MAX) >> 1) for b in range(256))


_HALVE: Final = _halve_table()


class AgingPolicy(_Base):
    """Least frequently used, the frequency counted from the accessed bits.

    `scan()` reads and clears the accessed bits of the whole domain (in `accessed` calls
    of at most MAX_AUDIT_COUNT gfns) and adds `increment` to the counter of every gfn
    whose bit was set, paged out or not; every `decay_scans` scans all counters are halved,
    so the count forgets old references. A guest fault counts at once (the gfn was just
    used), once per scan interval whatever the bit says. `choose` takes resident gfns of
    the lowest counter first, round-robin from a hand among equal counters. With
    `increment=64, decay_scans=1` the counter is the classic aging shift register
    (Linux 2.4's page age): each scan `c = (c + 64 * bit) >> 1`, i.e. `(c >> 1) | (bit << 5)`.

    One byte a gfn: the counter in the low 7 bits and a paged-out flag in the top bit, so
    the lowest level holding a resident gfn is found with `bytearray.find` (C speed) and
    `choose` costs O(gfns passed) in C plus O(victims) in Python, not a sort; plus the
    `paged` bytes of every policy and one byte a gfn of faults seen since the last scan.
    """

    name = "aging"

    def __init__(
        self,
        nr_gfns: int,
        accessed: Accessed,
        *,
        increment: int = 1,
        decay_scans: int = AGING_DECAY_SCANS,
    ) -> None:
        super().__init__(nr_gfns)
        if not 1 <= increment <= AGING_MAX or decay_scans < 1:
            raise ValueError("aging needs 1 <= increment <= 127 and decay_scans >= 1")
        self._accessed = accessed
        self.increment = increment
        self.decay_scans = decay_scans
        self.key = bytearray(nr_gfns)  # counter | _PAGED_FLAG when paged out
        self._faulted = bytearray(nr_gfns)  # counted by a fault since the last scan
        self._level = 0  # no resident gfn has a lower counter than this
        self.hand = 0
        self.scans = 0
        # Saturating addition of the increment, paged flag kept.
        self._bump = bytes(
            (b & _PAGED_FLAG) | min(AGING_MAX, (b & AGING_MAX) + increment) for b in range(256)
        )

    def counter(self, gfn: int) -> int:
        """The gfn's current count."""
        return self.key[gfn] & AGING_MAX

    def paged_out(self, gfn: int) -> None:
        self.paged[gfn] = 1
        self.key[gfn] |= _PAGED_FLAG

    def dropped(self, gfn: int) -> None:
        self.paged[gfn] = 0
        self._resident(gfn)

    def paged_in(self, gfn: int, *, mru: bool = True) -> None:
        self.paged[gfn] = 0
        if mru and not self._faulted[gfn]:
            self._faulted[gfn] = 1
            self.key[gfn] = self._bump[self.key[gfn]]
        self._resident(gfn)

    def _resident(self, gfn: int) -> None:
        v = self.key[gfn] & AGING_MAX
        self.key[gfn] = v
        if v < self._level:
            self._level = v

    async def scan(self) -> None:
        """One pass over the domain's accessed bits (read and cleared), then maybe decay."""
        key, bump, faulted = self.key, self._bump, self._faulted
        nr = self.nr_gfns
        for start in range(0, nr, MAX_AUDIT_COUNT):
            count = min(MAX_AUDIT_COUNT, nr - start)
            bits = await self._accessed(start, count)
            if bits.count(0) == len(bits):
                continue
            for m in re.finditer(_ONE, unpack_bits(bits, count)):
                g = start + m.start()
                if not faulted[g]:
                    key[g] = bump[key[g]]
        self._faulted = bytearray(nr)
        self.scans += 1
        if self.scans % self.decay_scans == 0:
            key[:] = key.translate(_HALVE)
            self._level >>= 1

    async def choose(self, n: int, skip: Callable[[int], bool]) -> list[int]:
        out: list[int] = []
        taken: set[int] = set()
        key, nr = self.key, self.nr_gfns
        level = self._level
        skipped_level = AGING_MAX + 1
        while len(out) < n and level <= AGING_MAX:
            b = _LEVELS[level]
            for lo, hi in ((self.hand, nr), (0, self.hand)):
                g = key.find(b, lo, hi)
                while g >= 0:
                    if skip(g) or g in taken:
                        skipped_level = min(skipped_level, level)
                    else:
                        out.append(g)
                        taken.add(g)
                        if len(out) >= n:
                            self.hand = g + 1 if g + 1 < nr else 0
                            self._level = min(level, skipped_level)
                            return out
                    g = key.find(b, g + 1, hi)
            level += 1  # no resident gfn left at this level but skipped ones
        self._level = min(level, skipped_level)
        return out


def make_policy(
    name: str, nr_gfns: int, accessed: Accessed, *, mru_size: int | None = None
) -> XenpagingPolicy | ClockPolicy | AgingPolicy:
    """The policy called `name` (one of POLICIES); ValueError otherwise."""
    if name == "xenpaging":
        return XenpagingPolicy(nr_gfns, mru_size)
    if name == "clock":
        return ClockPolicy(nr_gfns, accessed)
    if name == "aging":
        return AgingPolicy(nr_gfns, accessed)
    raise ValueError(f"unknown policy {name!r}: {', '.join(POLICIES)}")


POLICIES: Final = ("xenpaging", "clock", "aging")
