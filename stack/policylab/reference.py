"""Offline references a policy is measured against: exact LRU's whole miss-ratio curve in one
pass (Mattson's stack algorithm), ARC, and perfect LFU (the best a policy that must learn
the probabilities A0 is given can do: count them); Belady's optimum and A0 are in
stack.benchlib.

Every reference starts with an empty memory, as `TraceMemory` does by default: a first
touch is a fault.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np


def lru_stack_distances(trace: Sequence[int]) -> tuple[np.ndarray, int]:
    """Mattson, Gecsei, Slutz and Traiger (1970): for each re-access, how many other gfns
    were touched since the gfn's last access (its depth in the LRU stack), and the count
    of first touches. LRU with C frames hits an access exactly when its depth is < C, for
    every C at once. The depth is counted with a Fenwick tree over access times holding
    a 1 at each gfn's latest access: O(n log n)."""
    n = len(trace)
    tree = [0] * (n + 1)
    last: dict[int, int] = {}
    depths = np.empty(n, dtype=np.int64)
    k = 0
    live = 0  # 1s in the tree: distinct gfns so far
    for i, g in enumerate(trace):
        j = last.get(g)
        if j is not None:
            # 1s at times <= j: prefix sum; the depth is the 1s after j.
            s, x = 0, j + 1
            while x:
                s += tree[x]
                x &= x - 1
            depths[k] = live - s
            k += 1
            x = j + 1
            while x <= n:
                tree[x] -= 1
                x += x & -x
            live -= 1
        last[g] = i
        x = i + 1
        while x <= n:
            tree[x] += 1
            x += x & -x
        live += 1
    return depths[:k], len(last)


def lru_curve(trace: Sequence[int], max_size: int) -> np.ndarray:
    """Exact LRU's faults for every memory size 0..max_size (index = size), in one pass."""
    depths, cold = lru_stack_distances(trace)
    hist = np.bincount(np.minimum(depths, max_size), minlength=max_size + 1)
    # faults(C) = first touches + re-accesses of depth >= C
    deeper = np.concatenate(([0], np.cumsum(hist)))  # deeper[C] = re-accesses of depth < C
    return cold + len(depths) - deeper[: max_size + 1]


def arc_faults(trace: Sequence[int], capacity: int) -> int:
    """Faults of ARC (Megiddo and Modha, FAST 2003), seeing every access: T1/T2 recency and
    frequency lists, B1/B2 their ghosts, the target size p of T1 adapted on ghost hits."""
    c = capacity
    t1: OrderedDict[int, None] = OrderedDict()
    t2: OrderedDict[int, None] = OrderedDict()
    b1: OrderedDict[int, None] = OrderedDict()
    b2: OrderedDict[int, None] = OrderedDict()
    p = 0.0
    faults = 0

    def replace(in_b2: bool) -> None:
        if t1 and (len(t1) > p or (in_b2 and len(t1) == p) or not t2):
            g, _ = t1.popitem(last=False)
            b1[g] = None
        else:
            g, _ = t2.popitem(last=False)
            b2[g] = None

    for x in trace:
        if x in t1:
            del t1[x]
            t2[x] = None
            continue
        if x in t2:
            t2.move_to_end(x)
            continue
        faults += 1
        if x in b1:
            p = min(float(c), p + max(len(b2) / len(b1), 1.0))
            replace(False)
            del b1[x]
            t2[x] = None
        elif x in b2:
            p = max(0.0, p - max(len(b1) / len(b2), 1.0))
            replace(True)
            del b2[x]
            t2[x] = None
        else:
            l1 = len(t1) + len(b1)
            if l1 == c:
                if len(t1) < c:
                    b1.popitem(last=False)
                    replace(False)
                else:
                    t1.popitem(last=False)
            elif l1 < c and l1 + len(t2) + len(b2) >= c:
                if l1 + len(t2) + len(b2) == 2 * c:
                    b2.popitem(last=False)
                replace(False)
            t1[x] = None
    return faults


def lfu_faults(trace: Sequence[int], capacity: int) -> int:
    """Faults of perfect LFU: every access counted, counts kept for evicted gfns and never
    decayed; a fault with memory full evicts the resident gfn with the lowest count (of
    those tied, the least recently used). A heap of (count, last access, gfn) with stale
    entries skipped when popped: O(n log n)."""
    counts: dict[int, int] = {}
    resident: dict[int, tuple[int, int]] = {}  # gfn -> its live heap key (count, last)
    heap: list[tuple[int, int, int]] = []
    faults = 0
    for i, g in enumerate(trace):
        c = counts.get(g, 0) + 1
        counts[g] = c
        if g not in resident:
            faults += 1
            if capacity <= 0:
                continue
            if len(resident) >= capacity:
                while True:
                    c0, i0, g0 = heapq.heappop(heap)
                    if resident.get(g0) == (c0, i0):
                        del resident[g0]
                        break
        resident[g] = (c, i)
        heapq.heappush(heap, (c, i, g))
        if len(heap) > 4 * len(resident) + 1024:  # drop the stale keys now and then
            heap = [(k[0], k[1], h) for h, k in resident.items()]
            heapq.heapify(heap)
    return faults
