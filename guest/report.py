"""The workload's report: what one run saw, as plain data and as a few readable lines."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class GuestReport:
    """What a run saw. `ok` is false on any integrity error, stuck vCPU or unexpected error."""

    seed: int
    pattern: str
    vcpus: int
    nr_gfns: int
    elapsed_s: float = 0.0
    reads: int = 0
    writes: int = 0
    efault_checks: int = 0  # accesses to ballooned-out gfns that correctly got EFAULT
    balloon_out: int = 0
    balloon_in: int = 0
    balloon_refused: dict[str, int] = field(default_factory=dict)
    faults_seen: int = 0
    fault_threshold_ms: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    latency_hist_ms: list[list[float]] = field(default_factory=list)  # [low, high, count]
    integrity_errors: int = 0
    lost_gfns: list[int] = field(default_factory=list)
    unexpected_errors: dict[str, int] = field(default_factory=dict)
    error_details: list[dict[str, Any]] = field(default_factory=list)
    stuck_vcpus: list[int] = field(default_factory=list)
    stuck_after_s: float = 0.0
    max_pending_s: float = 0.0
    verified: int = 0
    unverified: int = 0
    verify_latency_ms: dict[str, float] = field(default_factory=dict)
    aborted: str | None = None
    shadow_bytes: int = 0

    @property
    def ops(self) -> int:
        """Accesses made in the workload phase."""
        return self.reads + self.writes

    @property
    def ok(self) -> bool:
        """True when every byte checked out and no vCPU got stuck."""
        return (
            self.integrity_errors == 0
            and not self.stuck_vcpus
            and not self.unexpected_errors
            and self.unverified == 0
            and self.aborted is None
        )

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data."""
        out = dataclasses.asdict(self)
        out["ops"] = self.ops
        out["ok"] = self.ok
        return out

    def summary(self) -> str:
        """A few readable lines."""
        lat = self.latency_ms
        lines = [
            f"guest: {'OK' if self.ok else 'FAILED'}  seed={self.seed} pattern={self.pattern} "
            f"vcpus={self.vcpus} gfns={self.nr_gfns} elapsed={self.elapsed_s:.1f}s",
            f"  ops {self.ops} (reads {self.reads}, writes {self.writes}), "
            f"faults seen {self.faults_seen} (> {self.fault_threshold_ms:g} ms), "
            f"EFAULT checks {self.efault_checks}, balloon out/in {self.balloon_out}/"
            f"{self.balloon_in}",
            f"  latency ms p50 {lat.get('p50', 0):.3f}  p99 {lat.get('p99', 0):.3f}  "
            f"max {lat.get('max', 0):.3f}",
            f"  verified {self.verified}/{self.nr_gfns} gfns, integrity errors "
            f"{self.integrity_errors}, lost gfns {len(self.lost_gfns)}, stuck vCPUs "
            f"{self.stuck_vcpus or 0} (pending > {self.stuck_after_s:g} s)",
        ]
        if self.unexpected_errors:
            lines.append(f"  unexpected errors: {self.unexpected_errors}")
        if self.aborted:
            lines.append(f"  aborted: {self.aborted}")
        lines.extend(f"  error: {d}" for d in self.error_details[:5])
        return "\n".join(lines)
