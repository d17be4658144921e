"""`clock2q`: 2Q (Johnson and Shasha, VLDB 1994) on hv's accessed bits, its main queue a
generalized clock of use counts.

New gfns (faulted in for the first time in a while) enter A1in, a FIFO of at most
`KIN` of the resident gfns. The head of A1in leaves it when A1in is over that size: to
the main queue if its accessed bit says the guest used it again since its fault, else
it is the victim, and its number goes to A1out, a ghost FIFO of the last `KOUT` x
resident evicted from A1in. A fault on an A1out ghost enters the main queue directly: it
came back within the ghost's span, which a one-off page does not. The main queue is a
generalized clock (GCLOCK) over the gfn space: a hand passing a gfn adds one to its count
(up to `CMAX`) when its bit is set, else takes one off, and evicts it at zero: a count
is a frequency estimate over the last few turns of the hand.

Why: A1in keeps one-off gfns (a scan, the cold tail of Zipf) from displacing used ones,
as CAR's T1 does; the counts rank used gfns by frequency, which CAR's second clock
(used again or not) cannot; and a loop larger than memory keeps part of itself resident
in the main queue (ghost hits enter it, and its counts hold them) instead of missing
every access as LRU does. BENCHMARKS.md ("Policy quality") has the figures.

Accessed bits are fetched in aligned windows (`CAR_WINDOW`), at most once per window per
`choose`, and kept in a byte per gfn until the policy judges the gfn, so no bit is
cleared unjudged. The fault's own bit is dropped, as car does (see car.py).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Final

from protocol import MAX_AUDIT_COUNT, unpack_bits

from .base import Accessed, PolicyBase
from .car import CAR_RECENT_FAULTS, CAR_WINDOW

#: A1in's size, as a share of the resident gfns (2Q's Kin; the paper suggests 25%). On the
#: bench's traces 20% traded a little of the hot set for Zipf and the loop (BENCHMARKS.md).
KIN: Final = 0.2
#: A1out's size, as a share of the resident gfns (2Q's Kout; the paper suggests 50%).
KOUT: Final = 0.5
#: Largest use count in the main queue: a gfn unused for this many turns of the hand goes.
CMAX: Final = 3

_NONE, _IN, _MAIN = 0, 1, 2


class Clock2QPolicy(PolicyBase):
    """2Q with a GCLOCK main queue, on the accessed bits (module docstring).

    Per gfn: `where` (none, A1in, main), a use count, a fetched bit, an enqueue stamp
    (int32) and the `paged` byte, 8 bytes; plus A1in's and A1out's entries.
    """

    name = "clock2q"

    def __init__(self, nr_gfns: int, accessed: Accessed, window: int = CAR_WINDOW) -> None:
        super().__init__(nr_gfns)
        self._accessed = accessed
        self.window = max(8, min(window, MAX_AUDIT_COUNT))
        self.where = bytearray([_IN]) * nr_gfns  # every gfn starts resident, in A1in
        self.count = bytearray(nr_gfns)
        self.ref = bytearray(nr_gfns)  # fetched accessed bits not judged yet
        # A1in holds (gfn, stamp); an entry whose stamp is not the gfn's is stale.
        self._stamp = [0] * nr_gfns
        self.a1in: deque[tuple[int, int]] = deque((g, 0) for g in range(nr_gfns))
        self.a1out: OrderedDict[int, None] = OrderedDict()
        self.size = [0, nr_gfns, 0]  # gfns per `where`
        self.resident = nr_gfns
        self.hand = 0
        self._faulted: list[int] = []
        self._fetched: set[int] = set()

    def _move(self, g: int, to: int) -> None:
        self.size[self.where[g]] -= 1
        self.size[to] += 1
        self.where[g] = to
        if to == _IN:
            self._stamp[g] += 1
            self.a1in.append((g, self._stamp[g]))

    # -- the pager's notifications --

    def paged_out(self, gfn: int) -> None:
        if self.paged[gfn]:
            return
        self.paged[gfn] = 1
        self.resident -= 1
        self.ref[gfn] = 0
        if self.where[gfn] == _IN:
            self.a1out[gfn] = None
            while len(self.a1out) > max(1, int(KOUT * self.resident)):
                self.a1out.popitem(last=False)
        self._move(gfn, _NONE)

    def paged_in(self, gfn: int, *, mru: bool = True) -> None:
        if not self.paged[gfn] and self.where[gfn] != _NONE:
            return  # resident already
        self.paged[gfn] = 0
        self.resident += 1
        self.ref[gfn] = 0
        if mru and gfn in self.a1out:  # back within the ghost's span: used, not one-off
            del self.a1out[gfn]
            self.count[gfn] = 1
            self._move(gfn, _MAIN)
        else:  # a proactive page-in is no evidence of use
            self.count[gfn] = 0
            self._move(gfn, _IN)
        if mru:
            self._faulted.append(gfn)

    def dropped(self, gfn: int) -> None:
        # Gone from the paging path (ballooned, lost) or a refused nomination: resident as
        # far as we know, with no history.
        if self.paged[gfn] or self.where[gfn] == _NONE:
            self.resident += 1
        self.paged[gfn] = 0
        self.ref[gfn] = 0
        self.a1out.pop(gfn, None)
        self._move(gfn, _IN)

    # -- the accessed bits --

    async def _fetch_window(self, w: int) -> None:
        self._fetched.add(w)
        start = w * self.window
        count = min(self.window, self.nr_gfns - start)
        bits = await self._accessed(start, count)
        if bits.count(0) != len(bits):
            ref = self.ref
            old = int.from_bytes(ref[start : start + count], "little")
            new = int.from_bytes(unpack_bits(bits, count), "little")
            ref[start : start + count] = (old | new).to_bytes(count, "little")

    async def _used(self, g: int) -> bool:
        if g // self.window not in self._fetched:
            await self._fetch_window(g // self.window)
        r = self.ref[g]
        self.ref[g] = 0
        return bool(r)

    async def choose(self, n: int, skip: Callable[[int], bool]) -> list[int]:
        self._fetched = set()
        # The fault's own bit is no use: drop it for the gfns faulted in since the last
        # call, the last max(n, CAR_RECENT_FAULTS) of them (earlier ones had time to be
        # used again: their bits count), as car does.
        recent = self._faulted[-max(n, CAR_RECENT_FAULTS) :]
        self._faulted = []
        for g in recent:
            if g // self.window not in self._fetched:
                await self._fetch_window(g // self.window)
            self.ref[g] = 0
        out: list[int] = []
        taken: set[int] = set()
        where, count, stamp, a1in = self.where, self.count, self._stamp, self.a1in
        kin = max(1, int(KIN * self.resident))
        in_taken = 0
        nr = self.nr_gfns
        in_steps = main_steps = 0  # bounds: a turn of A1in, (CMAX + 2) turns of the hand
        in_limit = len(a1in)
        while len(out) < n:
            from_in = a1in and (self.size[_IN] - in_taken > kin or self.size[_MAIN] == 0)
            if from_in and in_steps < in_limit:
                in_steps += 1
                g, s = a1in.popleft()
                if stamp[g] != s or where[g] != _IN or g in taken:
                    continue  # stale
                if skip(g):
                    a1in.append((g, s))
                    continue
                if await self._used(g):  # used since its fault: main queue
                    count[g] = 1
                    self.size[_IN] -= 1
                    self.size[_MAIN] += 1
                    where[g] = _MAIN
                    continue
                # The victim leaves A1in here; `paged_out` sends it to A1out, a refused
                # nomination (`dropped`) back to A1in's tail.
                out.append(g)
                taken.add(g)
                in_taken += 1
                continue
            if main_steps > (CMAX + 2) * nr or self.size[_MAIN] == 0:
                break
            main_steps += 1
            g = self.hand
            self.hand = (g + 1) % nr
            if where[g] != _MAIN or g in taken or skip(g):
                continue
            if await self._used(g):
                if count[g] < CMAX:
                    count[g] += 1
                continue
            if count[g]:
                count[g] -= 1
                continue
            out.append(g)
            taken.add(g)
        return out
