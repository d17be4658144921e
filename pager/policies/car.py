"""`car`: Clock with Adaptive Replacement (Bansal & Modha, FAST 2004) on hv's accessed bits."""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Final

from protocol import MAX_AUDIT_COUNT, unpack_bits

from .base import Accessed, PolicyBase

#: `car`'s accessed bits are fetched in aligned windows of this many gfns. A fetched bit is
#: kept in the policy's own `ref` byte until a hand judges the gfn, so the size of a window
#: costs calls and bytes, never information. Each call is a round trip to hv on the
#: page-out path: with 512, car made 2.35 calls per fault on the bench's Zipf trace; with
#: 8,192 (a 1 KiB bitmap) 0.82, with the same faults.
CAR_WINDOW: Final = 8192

_T1, _T2, _B1, _B2 = 1, 2, 3, 4  # `where` a gfn is; 0: in no list

#: `car` drops the fault's own accessed bit of at most this many gfns faulted in since its
#: last `choose` (or n, if more); the bits of earlier ones count as a use.
CAR_RECENT_FAULTS: Final = 256


class CarPolicy(PolicyBase):
    """CAR, Clock with Adaptive Replacement (Bansal & Modha, FAST 2004), on the accessed bits.

    Two clocks of resident gfns, T1 (seen once) and T2 (seen again), and two LRU lists of
    gfns evicted from them, B1 and B2 (ghosts: gfns only). A hand reaching a T1 gfn whose
    reference bit is set moves it to T2; a T2 gfn with the bit set goes round again; a gfn
    with the bit clear is a victim. The hand works on T1 while T1 holds at least `p` gfns,
    else on T2. A fault on a B1 ghost (evicted from T1 too early) raises p, one on a B2
    ghost lowers it; either way the gfn comes back into T2. Other faults enter T1.

    Adapted to the pager: a gfn's reference bit is hv's accessed bit, fetched (and cleared
    in hv) in aligned windows of `window` gfns, at most once per window per `choose`, and
    kept in `ref` until a hand judges the gfn (so no bit is cleared unjudged). The access
    that faulted a gfn in set its bit too. `choose` first fetches the windows of the gfns
    faulted in since its last call and drops their bits as the faults' own, so such a gfn
    reaches T2 only when touched again after the fault. Only the last
    max(n, CAR_RECENT_FAULTS) of them, though: when more faults came without a `choose`
    (memory below its size), the earlier ones have had time to be used again, and their
    bits count (dropping them all cost up to 5% on Zipf, BENCHMARKS.md). A
    chosen gfn stays in its clock, passed by the hand, until `paged_out` moves it to
    its ghost list (a refused nomination leaves it resident, at the clock's tail). The
    cache size c is the number of resident gfns after the last eviction; the ghost lists
    are trimmed to |T1| + |B1| <= c and |T1| + |T2| + |B1| + |B2| <= 2c. Every gfn
    starts in T1 (the pager starts with all gfns resident).

    Per gfn: two int32 links (every gfn is in at most one list), `where`, `ref`, a
    fault-bit flag and the `paged` byte: 12 bytes.
    """

    name = "car"

    def __init__(self, nr_gfns: int, accessed: Accessed, window: int = CAR_WINDOW) -> None:
        super().__init__(nr_gfns)
        self._accessed = accessed
        self.window = max(8, min(window, MAX_AUDIT_COUNT))
        nr = nr_gfns
        self.next = array("i", range(1, nr + 1))
        self.prev = array("i", range(-1, nr - 1))
        if nr:
            self.next[nr - 1] = 0
            self.prev[0] = nr - 1
        self.where = bytearray([_T1]) * nr
        self.head = [-1, 0 if nr else -1, -1, -1, -1]
        self.size = [0, nr, 0, 0, 0]
        self.ref = bytearray(nr)  # fetched accessed bits not judged yet
        self._fault_bit = bytearray(nr)  # 1: the gfn's bit in hv is its fault's own
        self._faulted: list[int] = []  # gfns with _fault_bit, in fault order
        self._fetched: set[int] = set()  # windows fetched during this choose
        self.c = max(1, nr)
        self.p = 0.0

    # -- the lists: circular and doubly linked through next/prev; head = hand or LRU end --

    def _push(self, lst: int, g: int) -> None:
        h = self.head[lst]
        if h < 0:
            self.next[g] = self.prev[g] = g
            self.head[lst] = g
        else:
            t = self.prev[h]
            self.next[t] = g
            self.prev[g] = t
            self.next[g] = h
            self.prev[h] = g
        self.where[g] = lst
        self.size[lst] += 1

    def _unlink(self, g: int) -> None:
        lst = self.where[g]
        if not lst:
            return
        nx, pv = self.next[g], self.prev[g]
        if nx == g:
            self.head[lst] = -1
        else:
            self.next[pv] = nx
            self.prev[nx] = pv
            if self.head[lst] == g:
                self.head[lst] = nx
        self.where[g] = 0
        self.size[lst] -= 1

    def _trim(self) -> None:
        size, c = self.size, self.c
        while size[_B1] and size[_T1] + size[_B1] > c:
            self._unlink(self.head[_B1])
        while size[_B1] + size[_B2] and sum(size) > 2 * c:
            self._unlink(self.head[_B2 if size[_B2] else _B1])

    # -- the pager's notifications --

    def paged_out(self, gfn: int) -> None:
        self.paged[gfn] = 1
        lst = self.where[gfn]
        self._unlink(gfn)
        self.ref[gfn] = 0
        self._fault_bit[gfn] = 0
        self.c = max(1, self.size[_T1] + self.size[_T2])
        self.p = min(self.p, float(self.c))
        if lst in (_T1, _T2):
            self._push(_B1 if lst == _T1 else _B2, gfn)
        self._trim()

    def dropped(self, gfn: int) -> None:
        # Gone from the paging path (ballooned, lost): no history. If still resident
        # (a refused nomination), the hand meets it again in T1.
        self.paged[gfn] = 0
        self._unlink(gfn)
        self.ref[gfn] = 0
        self._fault_bit[gfn] = 0
        self._push(_T1, gfn)
        self._trim()

    def paged_in(self, gfn: int, *, mru: bool = True) -> None:
        self.paged[gfn] = 0
        lst = self.where[gfn]
        if lst in (_T1, _T2):
            return  # resident already
        b1, b2 = self.size[_B1], self.size[_B2]  # counting gfn, as in the paper
        self._unlink(gfn)
        self.ref[gfn] = 0
        if mru:
            self._fault_bit[gfn] = 1
            self._faulted.append(gfn)
            if lst == _B1:  # evicted from T1 too early: more room for recency
                self.p = min(self.p + max(1.0, b2 / b1), float(self.c))
            elif lst == _B2:  # evicted from T2 too early: more room for frequency
                self.p = max(self.p - max(1.0, b1 / b2), 0.0)
        # A proactive page-in (no guest touch) is no evidence of use: T1, p unchanged.
        self._push(_T2 if mru and lst in (_B1, _B2) else _T1, gfn)
        self._trim()

    # -- the reference bits --

    async def _fetch(self, start: int, count: int) -> None:
        bits = await self._accessed(start, count)
        if bits.count(0) != len(bits):
            ref = self.ref
            old = int.from_bytes(ref[start : start + count], "little")
            new = int.from_bytes(unpack_bits(bits, count), "little")
            ref[start : start + count] = (old | new).to_bytes(count, "little")
        fb = self._fault_bit
        for g in self._faulted:
            if start <= g < start + count and fb[g]:
                fb[g] = 0
                self.ref[g] = 0  # the fault's own access

    async def _fetch_window(self, w: int) -> None:
        self._fetched.add(w)
        start = w * self.window
        await self._fetch(start, min(self.window, self.nr_gfns - start))

    async def _ref(self, g: int) -> bool:
        w = g // self.window
        if w not in self._fetched:
            await self._fetch_window(w)
        r = self.ref[g]
        self.ref[g] = 0
        return bool(r)

    async def choose(self, n: int, skip: Callable[[int], bool]) -> list[int]:
        self._fetched = set()
        # The fault bits of the gfns faulted in since the last call are dropped at once,
        # up to the last max(n, CAR_RECENT_FAULTS) of them. More waited (memory was below
        # its size, no call): their bits may be the faults' or later uses', which tell
        # more, and count as a use.
        fb = self._fault_bit
        faulted = [g for g in self._faulted if fb[g]]
        keep = max(n, CAR_RECENT_FAULTS)
        for g in faulted[:-keep]:
            fb[g] = 0
        self._faulted = faulted[-keep:]
        for w in sorted({g // self.window for g in self._faulted}):
            if w not in self._fetched:
                await self._fetch_window(w)
        self._faulted = [g for g in self._faulted if fb[g]]
        out: list[int] = []
        taken: set[int] = set()
        idle = [0, 0, 0]  # hand steps in T1/T2 since the last one that did something
        t1_taken = 0
        head, nxt, size = self.head, self.next, self.size
        while len(out) < n:
            s1, s2 = size[_T1], size[_T2]
            live1 = s1 > 0 and idle[_T1] < s1
            live2 = s2 > 0 and idle[_T2] < s2
            if not (live1 or live2):
                break  # a whole turn of each clock found only skipped or chosen gfns
            lst = _T1 if live1 and (not live2 or s1 - t1_taken >= max(1.0, self.p)) else _T2
            g = head[lst]
            head[lst] = nxt[g]  # the hand passes g: g is the clock's tail now
            if g in taken or skip(g):
                idle[lst] += 1
                continue
            referenced = await self._ref(g)
            if self.where[g] != lst:
                continue  # dropped while the bits were fetched
            idle[lst] = 0
            fb[g] = 0
            if referenced:
                if lst == _T1:  # used again: T1 -> T2
                    self._unlink(g)
                    self._push(_T2, g)
                    idle[_T2] = 0  # T2 has a gfn its hand has not passed yet
                continue  # in T2: another turn
            out.append(g)
            taken.add(g)
            if lst == _T1:
                t1_taken += 1
        return out
