"""The workload's settings: what one run does, each setting checked before it starts."""

from __future__ import annotations

from dataclasses import dataclass

from .patterns import PATTERNS


@dataclass
class GuestConfig:
    """What the workload does; defaults suit a short demo run."""

    seed: int = 0
    pattern: str = "zipf"
    vcpus: int | None = None  # None: every vCPU the domain has
    duration: float | None = 10.0  # seconds of workload (None: until `ops` or a stop)
    ops: int | None = None  # total accesses across vCPUs (None: no limit)
    write_ratio: float = 0.3
    partial_reads: float = 0.2  # share of reads that read a sub-range of the page
    zipf_s: float = 1.1
    hot_fraction: float = 0.1
    hot_shift_s: float = 2.0
    balloon_every: float = 1.0  # seconds between balloon rounds; 0 disables ballooning
    balloon_count: int = 2  # gfns ballooned out per round
    fault_ms: float = 2.0  # an access slower than this counts as a fault seen
    stuck_after: float = 10.0  # an access pending longer than this marks its vCPU stuck
    verify: bool = True  # read every gfn back at the end

    def check(self) -> None:
        """ValueError naming the first bad setting."""
        if self.pattern not in PATTERNS:
            raise ValueError(
                f"unknown pattern {self.pattern!r} (choose from {', '.join(PATTERNS)})"
            )
        if not 0.0 <= self.write_ratio <= 1.0:
            raise ValueError("write ratio must be within [0, 1]")
        if not 0.0 <= self.partial_reads <= 1.0:
            raise ValueError("partial read share must be within [0, 1]")
        if self.vcpus is not None and self.vcpus < 1:
            raise ValueError("vcpus must be >= 1")
        if self.duration is not None and self.duration < 0:
            raise ValueError("duration must be >= 0")
        if self.ops is not None and self.ops < 0:
            raise ValueError("ops must be >= 0")
        if self.duration is None and self.ops is None:
            raise ValueError("give a duration or an op count")
        if self.zipf_s <= 0:
            raise ValueError("zipf skew must be > 0")
        if not 0.0 < self.hot_fraction <= 1.0:
            raise ValueError("hot fraction must be within (0, 1]")
        if self.hot_shift_s <= 0:
            raise ValueError("hot-set shift period must be > 0")
        if self.balloon_every < 0 or self.balloon_count < 0:
            raise ValueError("balloon settings must be >= 0")
        if self.fault_ms < 0:
            raise ValueError("fault threshold must be >= 0")
        if self.stuck_after <= 0:
            raise ValueError("stuck-after must be > 0")
