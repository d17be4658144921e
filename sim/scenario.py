"""What a simulated run is built to and what it reports: the scenarios and `SimResult`.

A `Scenario` is the shape of a world (guest size, vCPUs, ops, the fault window and the
timings that follow from it); `sim.world.run_seed` builds one from it and fills a
`SimResult` with the verdict, what fired, and the hash of the trace.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from .plan import Plan
from .trace import Trace


@dataclass(frozen=True, slots=True)
class Scenario:
    """The shape of a world and how long its fault window lasts (simulated seconds)."""

    name: str
    nr_gfns: int
    vcpus: int
    ops: int
    window: float  # faults fall in [0, window) from the workload's start
    target: float = 0.5  # share of the gfns the domain may keep resident
    latency: float = 0.0002  # one way, per link
    ring_size: int = 64
    ring_mode: str = "reattach"
    restart_delay: float = 0.01
    liveness_s: float = 5.0  # paused vCPUs resume, and pages come in, within this
    batch: int = 16
    hot_shifts: int = 4  # times the guest's hot set moves over the fault window
    base: tuple[tuple[str, int], ...] = ()  # kinds that fire at least this often per seed

    @property
    def stuck_after(self) -> float:
        """A vCPU pending longer than this is stuck: the whole window plus the bound."""
        return self.window + self.liveness_s


#: Named scenarios: `tiny` for the test suite's hundreds of seeds, `small` the command's
#: default (quick to run and to shrink), `default` the issue's benchmark scenario.
SCENARIOS: Final = {
    "tiny": Scenario("tiny", nr_gfns=16, vcpus=2, ops=60, window=0.03, batch=4),
    "small": Scenario("small", nr_gfns=64, vcpus=2, ops=300, window=0.12, batch=8),
    "default": Scenario(
        "default",
        nr_gfns=1024,
        vcpus=4,
        ops=5000,
        window=1.0,
        target=0.3,
        hot_shifts=24,
        base=(("kill", 10), ("power", 2)),
    ),
}


@dataclass
class SimResult:
    """What one run did and found."""

    seed: int
    scenario: str
    plan: Plan
    ok: bool = False
    failures: list[str] = field(default_factory=list)
    stalled: bool = False  # xen ring mode: a lost pager orphaned the ring (as stress says)
    stuck: bool = False  # the run's bound ended it (steps or simulated time): see failures
    fired: Counter[str] = field(default_factory=Counter)
    crash_points: Counter[str] = field(default_factory=Counter)
    lives: int = 0
    sim_time: float = 0.0
    wall_s: float = 0.0
    guest: dict[str, Any] = field(default_factory=dict)
    hv_counters: dict[str, int] = field(default_factory=dict)
    trace_hash: str = ""
    trace_events: int = 0
    trace: Trace | None = None

    @property
    def lost(self) -> int:
        """Gfns the guest found lost (EIO): a failure unless media faults destroyed their
        copies (`sim.checks.MEDIA_FAULTS`), then an honest loss, still counted."""
        return len(set(self.guest.get("lost_gfns", ())))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "seed": self.seed,
            "scenario": self.scenario,
            "ok": self.ok,
            "failures": self.failures,
            "stalled": self.stalled,
            "stuck": self.stuck,
            "fired": dict(sorted(self.fired.items())),
            "crash_points": dict(sorted(self.crash_points.items())),
            "pager_lives": self.lives,
            "sim_time": round(self.sim_time, 6),
            "wall_s": round(self.wall_s, 3),
            "guest_ops": self.guest.get("ops", 0),
            "page_outs": self.hv_counters.get("page.evicted", 0),
            "page_ins": self.hv_counters.get("page.prepped", 0),
            "lost_gfns": self.lost,
            "trace_hash": self.trace_hash,
            "trace_events": self.trace_events,
            "plan": self.plan.to_dict(),
        }


__all__ = ["SCENARIOS", "Scenario", "SimResult"]
