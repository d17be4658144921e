"""What one `xpemu up`/`stress` run takes: its options, with the derived target and durations."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from protocol import RingMode

from .schedule import Fault


@dataclass
class StackOptions:
    """Everything `xpemu up` and `xpemu stress` take."""

    command: str = "up"
    run_dir: Path | None = None
    duration: float | None = 30.0  # None: until Ctrl-C
    nr_gfns: int = 4096
    target: int | None = None  # None: half of nr_gfns
    vcpus: int = 4
    host_frames: int | None = None
    ring_size: int = 64
    ring_mode: str = RingMode.reattach.value
    pattern: str = "hotset"
    write_ratio: float = 0.3
    seed: int = 0
    policy: str | None = None
    reserve: int | None = None  # the pager's --reserve (None: its default)
    record_trace: Path | None = None  # hv records the guest's accesses here (hv/trace.py)
    schedule: list[Fault] = field(default_factory=list)
    stuck_after: float = 10.0
    fault_ms: float = 2.0
    balloon_every: float = 1.0
    live: bool | None = None  # None: rich on a terminal, plain lines otherwise
    report: Path | None = None
    hv_cmd: list[str] = field(default_factory=lambda: [sys.executable, "-m", "hv"])
    pager_cmd: list[str] = field(default_factory=lambda: [sys.executable, "-m", "pager"])
    guest_cmd: list[str] = field(default_factory=lambda: [sys.executable, "-m", "guest"])
    start_timeout: float = 15.0  # hv ready, pager attached
    end_timeout: float = 60.0  # page everything in at the end
    use_proxy: bool = False  # route the pager through the fault proxy
    pager_kind: str = "xpemu"  # or "xenpaging": Xen's binary, no store to check (issue 22)

    @property
    def effective_target(self) -> int:
        """The domain's target: smaller than the guest, so paging really happens."""
        return self.nr_gfns // 2 if self.target is None else self.target

    @property
    def guest_duration(self) -> float | None:
        """Seconds of guest workload: the run's duration minus start-up and the end checks."""
        if self.duration is None:
            return None
        return max(1.0, self.duration - self.end_reserve)

    @property
    def end_reserve(self) -> float:
        """Seconds kept for start-up and the end phase, so `--duration` bounds the run."""
        if self.duration is None:
            return 0.0
        # Measured: ~1.5 s start-up, then the guest's own verify pass and the end phase
        # (store check, restart, page everything in, verify again) take ~15-35 % of a run.
        return min(max(5.0, 0.35 * self.duration), 14.0)
