"""What `xpemu bench` runs and how much of it: its sections, sizes and options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from pager.policy import POLICIES

#: The sections of the benchmark, in the order they run (`--only` picks some).
SECTIONS: Final = (
    "floor",
    "populate",
    "throughput",
    "recovery",
    "memory",
    "policy",
    "lazyfs",
    "sim",
    "campaign",
)

#: The sections run by default (`campaign` takes minutes: `--only campaign` or `--full`).
QUICK_SECTIONS: Final = tuple(s for s in SECTIONS if s != "campaign")


class BenchError(Exception):
    """The benchmark could not run (a process did not start, a wait timed out): one line."""


@dataclass
class Sizes:
    """How much of everything one mode measures."""

    repeats: int
    floor_n: int
    pop_samples: int
    pop_warm: int
    par_reads: int
    tput_pages: dict[int, int]
    recovery_pages: tuple[int, ...]
    policy_gfns: int
    policy_capacity: int
    policy_len: int
    vcpu_counts: tuple[int, ...] = (1, 4, 16)


QUICK: Final = Sizes(
    repeats=3,
    floor_n=4000,
    pop_samples=1000,
    pop_warm=100,
    par_reads=1500,
    tput_pages={1: 300, 16: 3000, 64: 6000, 256: 12000},
    recovery_pages=(10_000, 100_000),
    policy_gfns=8192,
    policy_capacity=4096,
    policy_len=200_000,
)

FULL: Final = Sizes(
    repeats=5,
    floor_n=10_000,
    pop_samples=2000,
    pop_warm=200,
    par_reads=4000,
    tput_pages={1: 500, 16: 5000, 64: 20_000, 256: 40_000},
    recovery_pages=(10_000, 100_000),
    policy_gfns=16_384,
    policy_capacity=8192,
    policy_len=1_000_000,
)


@dataclass
class BenchOptions:
    """What `xpemu bench` was asked for."""

    full: bool = False
    repeats: int | None = None
    only: tuple[str, ...] | None = None  # None: QUICK_SECTIONS, or SECTIONS when full
    work_dir: Path | None = None  # where stores and floors go (default: a temp dir)
    profile: Path | None = None  # run hv and pagers under py-spy, raw stacks here
    policies: tuple[str, ...] = POLICIES
    sizes: Sizes = field(default_factory=lambda: QUICK)

    def __post_init__(self) -> None:
        if self.only is None:
            self.only = SECTIONS if self.full else QUICK_SECTIONS
        if self.full and self.sizes is QUICK:
            self.sizes = FULL
        if self.repeats is not None:
            self.sizes = Sizes(**{**self.sizes.__dict__, "repeats": self.repeats})
