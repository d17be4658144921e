"""The report of one stack run, built from what the run recorded, and its readable summary.

`build_report` is pure: it reads plain data (the options, the pager's lives, dicts from
hv, the guest and the store checks) and returns the report dict; nothing here does I/O.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .lives import LifeLog
from .options import StackOptions
from .schedule import schedule_to_list
from .supervisor import FINAL_KILL, PagerLife, life_counts

# FINAL_KILL: imported from here by the end phase and the tests.
__all__ = ["FINAL_KILL", "RunFacts", "build_report", "summary_text"]


@dataclass
class RunFacts:
    """Everything a run recorded that its report is built from."""

    opts: StackOptions
    run_dir: Path
    lives: list[PagerLife] | LifeLog[PagerLife]  # a LifeLog holds only the latest in full
    final_n: int  # the pager incarnation asked to page everything in at the end
    counters: dict[str, int]  # hv's counters for domain 1
    last_epoch: int  # hv's attach epoch when last seen
    guest: dict[str, Any] | None  # the guest's own report
    guest_rc: int
    check: dict[str, Any]  # hv's `check` reply
    dom: dict[str, Any]  # hv's final status of domain 1
    store_mid: dict[str, Any] | None = None  # the store held against the audit, pager killed
    store_end: dict[str, Any] | None = None  # the store after everything was paged in
    final: dict[str, Any] | None = None  # the final verify through guest.sock
    paged_in: bool = False
    violations: list[str] = field(default_factory=list)
    injected: dict[str, int] = field(default_factory=dict)
    fault_log: list[dict[str, Any]] = field(default_factory=list)
    cuts_fired: int = 0
    orphaned: bool = False
    orphan_note: str | None = None
    power: dict[str, Any] | None = None  # power.PowerControl.report(), when the run had one
    lost_by_pager: int = 0  # gfns the pager lost for good (xenpaging after a restart)
    vcpu_stats: dict[str, Any] = field(default_factory=dict)  # hv's `counters` less counters


def build_report(f: RunFacts) -> dict[str, Any]:
    """The report dict of a finished run: `ok` and every figure behind it."""
    o, guest, final = f.opts, f.guest, f.final
    violations = list(f.violations)
    # Every life's counts, those a LifeLog let go included (supervisor.life_counts).
    folded = f.lives.folded if isinstance(f.lives, LifeLog) else Counter[str]()
    lives = folded + life_counts(f.lives, f.final_n)
    deaths = {k[5:]: v for k, v in sorted(lives.items()) if k.startswith("ends:")}
    # Restarts that followed a death during the run (not the end phase's own restart).
    restarts = max(0, len(f.lives) - 1 - lives["final_kills"])
    stuck = list(guest["stuck_vcpus"]) if guest else []
    integrity = (guest["integrity_errors"] if guest else 0) + (
        final["integrity_errors"] if final else 0
    )
    lost = max(len(guest["lost_gfns"]) if guest else 0, f.lost_by_pager)
    if guest is not None and not guest["ok"] and not stuck and not guest["integrity_errors"]:
        violations.append(f"guest failed: {guest.get('unexpected_errors') or guest.get('aborted')}")
    if f.guest_rc not in (0, 1):
        violations.append(f"guest exited with status {f.guest_rc}")
    if f.orphaned and not stuck:
        paused = f.dom["paused_vcpus"]
        if paused:
            stuck = list(paused)
    ok = not violations and integrity == 0 and not stuck and not f.orphaned
    ok = ok and guest is not None and guest["ok"]
    c = f.counters
    report: dict[str, Any] = {
        "command": o.command,
        "ok": ok,
        "seed": o.seed,
        "run_dir": str(f.run_dir),
        "logs": {n: str(f.run_dir / f"{n}.log") for n in ("hv", "pager", "guest")},
        "config": {
            "nr_gfns": o.nr_gfns,
            "target": o.effective_target,
            "vcpus": o.vcpus,
            "ring_size": o.ring_size,
            "ring_mode": o.ring_mode,
            "pattern": o.pattern,
            "duration": o.duration,
            "guest_duration": o.guest_duration,
            "stuck_after": o.stuck_after,
            "policy": o.policy,
            "pager": o.pager_kind,
        },
        "schedule": schedule_to_list(o.schedule),
        "faults_injected": dict(f.injected),
        "faults_log": f.fault_log,
        "pager": {
            "starts": len(f.lives),
            "restarts_survived": restarts,
            "kills": lives["kills"],
            "crash_points_fired": lives["crash_points"],
            "pager_deaths": lives["mid_run"],
            "cuts_fired": f.cuts_fired,
            "ends": deaths,
            "attaches": f.last_epoch,
            # Pagers that ended without ever attaching (xen mode: refused with EBUSY).
            "never_attached": lives["never_attached"],
            "paged_everything_in": f.paged_in,
            # The latest lives (lives.py: older ones only in the counts above).
            "lives": [vars(life) | {"cause": life.cause} for life in f.lives],
        },
        "pages": {
            "out": c.get("page.evicted", 0),
            "in": c.get("page.prepped", 0),
            "populated": c.get("page.populated", 0),
            "nominated": c.get("page.nominated", 0),
            "broken": c.get("page.broken", 0),
            "counters": c,
        },
        "guest": guest,
        "faults_seen_by_guest": guest["faults_seen"] if guest else None,
        "latency_ms": guest["latency_ms"] if guest else None,
        "final_verify": final,
        "store_before_pagein": f.store_mid,
        "store_after_pagein": f.store_end,
        "hv_violations": f.check["violations"],
        "integrity_errors": integrity,
        "lost_gfns": lost,
        "stuck_vcpus": stuck,
        "ring_orphaned": f.orphaned,
        "orphan_note": f.orphan_note,
        "final_status": f.dom,
        # Per vCPU: pauses, total and longest paused seconds (hv, trio's clock); the
        # populate round trips (each pause) as a summary and log-binned counts.
        "vcpus": f.dom.get("vcpu_stats") or f.vcpu_stats.get("vcpus", []),
        "populate_ms": f.vcpu_stats.get("populate_ms"),
        "populate_hist_ms": f.vcpu_stats.get("populate_hist_ms", []),
        "violations": violations,
    }
    if f.power is not None:  # the same dict: PowerControl.close adds its last lied syncs
        report["power"] = f.power
    return report


def summary_text(report: dict[str, Any]) -> str:
    """The readable end-of-run summary."""
    p = report["pager"]
    pages = report["pages"]
    lat = report.get("latency_ms") or {}
    g = report.get("guest") or {}
    lines = [
        f"xpemu {report['command']}: {'PASSED' if report['ok'] else 'FAILED'}  "
        f"seed={report['seed']}  elapsed={report.get('elapsed_s', 0)}s",
        f"  run dir {report['run_dir']}  (logs: hv.log, pager.log, guest.log)",
        f"  faults injected: {report['faults_injected'] or 'none'}",
        f"  pager deaths {p['pager_deaths']} (SIGKILLs {p['kills']}, crash points fired "
        f"{p['crash_points_fired']}), cuts fired {p['cuts_fired']}; restarts survived "
        f"{p['restarts_survived']}",
        f"  pages out {pages['out']}, in {pages['in']}, guest populates {pages['populated']}; "
        f"faults seen by the guest {report.get('faults_seen_by_guest')}",
        f"  guest ops {g.get('ops', 0)}  latency ms p50 {lat.get('p50', 0)}  "
        f"p99 {lat.get('p99', 0)}  max {lat.get('max', 0)}",
        f"  integrity errors {report['integrity_errors']}, lost gfns {report['lost_gfns']}, "
        f"stuck vCPUs {report['stuck_vcpus'] or 0}, hv violations "
        f"{len(report['hv_violations'])}",
    ]
    final = report.get("final_verify")
    if final:
        lines.append(
            f"  final verify after page-in: {final['verified']} gfns, "
            f"{final['integrity_errors']} errors"
        )
    if report.get("orphan_note"):
        lines.append(f"  XEN RING MODE: {report['orphan_note']}")
        lines.append(
            f"  pagers refused after the loss: {p['never_attached']}; paged-out gfns "
            f"unreachable: {report['final_status']['paged_pages']}; stuck vCPUs "
            f"{report['stuck_vcpus']}"
        )
    lines += vcpu_lines(report)
    lines += power_lines(report)
    for v in report["violations"][:10]:
        lines.append(f"  violation: {v}")
    return "\n".join(lines)


def power_lines(report: dict[str, Any]) -> list[str]:
    """Summary lines of the power faults (stack/power.py) and of the gfns lost, if any."""
    lines = []
    p = report.get("power")
    if p:
        lines.append(
            f"  power cuts {p['power_faults']} ({p['harsh']} harsh, {p.get('aimed', 0)} aimed at a "
            "write in flight): unsynced writes "
            f"{p['unsynced_writes']}, lost {p['writes_lost']}, torn {p['writes_torn']}, "
            f"name ops lost {p['meta_ops_lost']}; lies {p['lies']} ({p['lied_syncs']} syncs lied)"
        )
    lost = (report.get("guest") or {}).get("lost_gfns") or []
    if lost:
        shown = ", ".join(str(g) for g in sorted(lost)[:20])
        lines.append(f"  lost gfns ({len(lost)}): {shown}{', ...' if len(lost) > 20 else ''}")
    return lines


def vcpu_lines(report: dict[str, Any]) -> list[str]:
    """One summary line of every vCPU's pauses (count, total and longest paused time)."""
    vcpus = report.get("vcpus") or []
    if not vcpus:
        return []
    per = ", ".join(
        f"v{v['vcpu']} {v['pauses']}/{v['paused_s']:.2f}s/{v['longest_s'] * 1e3:.0f}ms"
        for v in vcpus
    )
    rt = report.get("populate_ms") or {}
    return [
        f"  vCPU pauses (count/total/longest): {per}; populate round trip ms "
        f"p50 {rt.get('p50', 0)} p99 {rt.get('p99', 0)} max {rt.get('max', 0)}"
    ]
