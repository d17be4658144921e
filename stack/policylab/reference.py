"""Offline references a policy is measured against: exact LRU's whole miss-ratio curve in one
pass (Mattson's stack algorithm) and ARC; Belady's optimum and A0 are in stack.benchlib.

Every reference starts with an empty memory, as `TraceMemory` does by default: a first
touch is a fault.
"""

from __future__ import annotations

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
