"""Access patterns: which gfn a vCPU touches next.

Each vCPU gets its own `random.Random` (seeded from the run's seed and its id), so a run
is reproducible per vCPU even though the vCPUs interleave freely.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable
from typing import Final

#: The pattern names `--pattern` accepts.
PATTERNS: Final = ("seq", "uniform", "zipf", "hotset")

#: Share of accesses a hot-set vCPU sends to the hot set (the rest is uniform).
HOT_SHARE: Final = 0.9

NextGfn = Callable[[float], int]
"""Gives the next gfn, given the seconds elapsed since the workload started."""


class ZipfTable:
    """Cumulative Zipf weights over ranks, and a seeded permutation mapping rank -> gfn.

    Built once per run and shared by the vCPUs; the permutation scatters the hot ranks over
    the address space so "hot" does not just mean "low gfns".
    """

    def __init__(self, nr_gfns: int, s: float, seed: int) -> None:
        weights = (1.0 / (rank**s) for rank in range(1, nr_gfns + 1))
        self.cum = list(itertools.accumulate(weights))
        self.total = self.cum[-1]
        self.perm = list(range(nr_gfns))
        random.Random(f"{seed}/zipf").shuffle(self.perm)

    def draw(self, rng: random.Random) -> int:
        """One gfn, Zipf-distributed."""
        rank = bisect.bisect_left(self.cum, rng.random() * self.total)
        return self.perm[min(rank, len(self.perm) - 1)]


def make_pattern(
    name: str,
    *,
    nr_gfns: int,
    vcpu: int,
    vcpus: int,
    rng: random.Random,
    zipf: ZipfTable | None = None,
    hot_fraction: float = 0.1,
    hot_shift_s: float = 2.0,
) -> NextGfn:
    """The next-gfn function of `vcpu` for pattern `name` (one of PATTERNS)."""
    if name == "seq":
        # Each vCPU sweeps the whole space from its own starting point.
        pos = itertools.count(vcpu * nr_gfns // max(vcpus, 1))
        return lambda _t: next(pos) % nr_gfns
    if name == "uniform":
        return lambda _t: rng.randrange(nr_gfns)
    if name == "zipf":
        if zipf is None:
            raise ValueError("zipf pattern needs a ZipfTable")
        return lambda _t: zipf.draw(rng)
    if name == "hotset":
        hot = max(1, int(nr_gfns * hot_fraction))

        def hotset(t: float) -> int:
            # The hot window slides by half its size every hot_shift_s seconds, so pages
            # that were hot go cold and must be paged out while new ones are paged in.
            if rng.random() >= HOT_SHARE:
                return rng.randrange(nr_gfns)
            base = int(t / hot_shift_s) * (hot // 2 or 1)
            return (base + rng.randrange(hot)) % nr_gfns

        return hotset
    raise ValueError(f"unknown pattern {name!r} (choose from {', '.join(PATTERNS)})")
