"""`clock`: second chance on hv's accessed bits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from protocol import MAX_AUDIT_COUNT

from .base import Accessed, PolicyBase

#: gfns whose accessed bits `clock` fetches (and clears) in one `accessed` call, at least.
#: Bits are judged when the hand reaches them, so a large window judges on stale bits: a
#: call fetches max(CLOCK_WINDOW, 2 * n) for a batch of n victims.
CLOCK_WINDOW: Final = 64


class ClockPolicy(PolicyBase):
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
