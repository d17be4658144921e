"""What happened when in a run: its logs (or a `xpemu sim --trace` file) read into one timeline.

A stack run's processes all log JSON lines with wall-clock timestamps from the one host
clock; the timeline puts t = 0 at the first line of `xpemu.log` and every event on it: the
harness's samples of hv's status (`stack.sample`, logged here by `log_sample`), the faults
it injected (`stack.fault`), the pager's lives (`child.started`, `stack.pager_exited`), hv's
attaches (`pager.attached`) and vCPU pauses (`vcpu.resumed`), and the guest's progress
lines (ops and latency per interval). A sim trace has the same events on simulated time
(`t`, component `c`, event `e`; sim/trace.py). Reading only: nothing here writes.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

#: The run directory's logs, read in this order (a rotated `.1` file before its live one).
LOGS = ("xpemu", "hv", "pager", "guest")


class NotARun(Exception):
    """The path is neither a run directory nor a sim trace (one line for the user)."""


@dataclass
class Timeline:
    """A run's events on one clock (seconds from its start), and its reports if it has them."""

    source: str  # the run directory or the trace file
    clock: str  # "wall" (a stack run) or "sim" (simulated time)
    samples: list[dict[str, Any]] = field(default_factory=list)  # t, tot_pages, target, ...
    faults: list[dict[str, Any]] = field(default_factory=list)  # t, kind, label
    starts: list[dict[str, Any]] = field(default_factory=list)  # t, n
    deaths: list[dict[str, Any]] = field(default_factory=list)  # t, n, cause
    attaches: list[dict[str, Any]] = field(default_factory=list)  # t, epoch
    pauses: list[dict[str, Any]] = field(default_factory=list)  # vcpu, start, end, s
    progress: list[dict[str, Any]] = field(default_factory=list)  # t, ops, p50, p99, max
    report: dict[str, Any] | None = None  # report.json: the run's own report
    guest: dict[str, Any] | None = None  # guest-report.json
    end: float = 0.0  # the last event's time
    seed: int | None = None  # a sim trace's seed (a run's is in its report)
    problems: list[str] = field(default_factory=list)  # lines that could not be read

    @property
    def incomplete(self) -> bool:
        """A run cut short: no report was written at its end (a sim trace has none)."""
        return self.clock == "wall" and self.report is None


def log_sample(log: Any, dom: dict[str, Any], counters: dict[str, int], at: float) -> None:
    """Log one sample of domain 1 for the timeline (the harness's poller, a few a second)."""
    log.info(
        "stack.sample",
        at=round(at, 3),
        tot_pages=dom["tot_pages"],
        target=dom["target"],
        paged=dom["paged_pages"],
        out=counters.get("page.evicted", 0),
        in_=counters.get("page.prepped", 0),
        ring=dom["ring"]["used"],
        epoch=dom["pager"]["epoch"],
        attached=dom["pager"]["attached"],
        paused=dom["paused_vcpus"],
    )


def load(path: Path) -> Timeline:
    """The timeline of a run directory or a sim trace file; NotARun otherwise."""
    if path.is_dir():
        return _load_run(path)
    if path.is_file():
        return _load_trace(path)
    raise NotARun(f"{path}: no such run directory or trace file")


def _lines(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in (path.with_name(path.name + ".1"), path):
        if not p.exists():
            continue
        if p.name.endswith(".1"):
            problems.append(f"{p.name}: the log was rotated; anything older is gone")
        for i, raw in enumerate(p.read_bytes().splitlines(), 1):
            try:
                rec = json.loads(raw)
            except ValueError:
                problems.append(f"{p.name}:{i}: not JSON (a line cut short?)")
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def _load_run(run_dir: Path) -> Timeline:
    if not (run_dir / "xpemu.log").exists():
        raise NotARun(f"{run_dir} is not a run directory (no xpemu.log in it)")
    tl = Timeline(str(run_dir), "wall")
    events: list[tuple[float, str, str, dict[str, Any]]] = []
    t0: float | None = None
    for name in LOGS:
        for rec in _lines(run_dir / f"{name}.log", tl.problems):
            ts = rec.get("timestamp")
            try:
                t = datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
            if name == "xpemu" and t0 is None:
                t0 = t
            events.append((t, name, str(rec.get("event")), rec))
    base = t0 if t0 is not None else min((e[0] for e in events), default=0.0)
    for t, proc, event, rec in sorted(events, key=lambda e: e[0]):
        _add(tl, t - base, proc, event, rec)
    tl.report = _json_file(run_dir / "report.json", tl.problems)
    tl.guest = _json_file(run_dir / "guest-report.json", tl.problems)
    return tl


def _load_trace(path: Path) -> Timeline:
    tl = Timeline(str(path), "sim")
    recs = _lines(path, tl.problems)
    if not recs or not all({"t", "c", "e"} <= rec.keys() for rec in recs[:5]):
        raise NotARun(f"{path} is neither a run directory nor a `xpemu sim --trace` file")
    for rec in recs:
        comp, event = str(rec["c"]), str(rec["e"])
        t = float(rec["t"])
        if comp == "sim" and event == "start":
            tl.seed = rec.get("seed")
        if t < 0:  # set-up and final checks, outside simulated time
            continue
        if comp == "sim" and event == "fault":
            event = "stack.fault"
            rec = {**rec, "fault": rec.get("kind", "?")}
        elif comp == "pager" and event in ("start", "end"):
            event = {"start": "child.started", "end": "stack.pager_exited"}[event]
            rec = {**rec, "child": "pager", "n": rec.get("life"), "start": rec.get("life")}
            rec.setdefault("cause", rec.get("outcome"))
        _add(tl, t, comp, event, rec)
    return tl


def _json_file(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        problems.append(f"{path.name}: not JSON (written when the run was cut?)")
        return None
    return data if isinstance(data, dict) else None


def fault_label(rec: dict[str, Any]) -> str:
    """A fault's short label: its kind and what it aimed at."""
    kind = str(rec.get("fault", "?"))
    detail = (
        rec.get("point")
        or (f"{rec['op']}={rec['action']}" if "op" in rec and "action" in rec else None)
        or rec.get("direction")
        or rec.get("mode")
        or ("harsh" if rec.get("harsh") else None)
        or (f"{rec['for']:g} s" if isinstance(rec.get("for"), int | float) else None)
    )
    return f"{kind} {detail}" if detail else kind


def _add(tl: Timeline, t: float, proc: str, event: str, rec: dict[str, Any]) -> None:
    tl.end = max(tl.end, t)
    if event == "stack.sample":
        tl.samples.append({"t": t, **{k: rec.get(k) for k in _SAMPLE_KEYS}})
    elif event == "stack.fault":
        label = fault_label(rec)
        outcome = rec.get("outcome")
        if isinstance(rec.get("held_s"), int | float) and outcome:
            outcome = f"{outcome} (held {rec['held_s']:g} s for a pager to kill)"
        tl.faults.append({"t": t, "kind": rec.get("fault"), "label": label, "outcome": outcome})
    elif event == "child.started" and rec.get("child") == "pager":
        tl.starts.append({"t": t, "n": rec.get("start")})
    elif event == "stack.pager_exited":
        tl.deaths.append({"t": t, "n": rec.get("n"), "cause": rec.get("cause")})
    elif event == "pager.attached" and proc == "hv":
        tl.attaches.append({"t": t, "epoch": rec.get("epoch")})
    elif event == "vcpu.resumed":
        s = float(rec.get("paused_s", 0.0))
        tl.pauses.append({"vcpu": rec.get("vcpu"), "start": t - s, "end": t, "s": s})
    elif event == "guest.progress":
        lat = rec.get("latency_ms") or {}
        tl.progress.append({"t": t, "ops": rec.get("ops", 0), **lat})


_SAMPLE_KEYS = ("tot_pages", "target", "paged", "out", "in_", "ring", "epoch", "paused")


def rates(samples: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """Per-second rate of a cumulative counter between consecutive samples (a restarted
    hv's counter going down counts as zero, not negative)."""
    ts, rs = [], []
    for a, b in itertools.pairwise(samples):
        dt = b["t"] - a["t"]
        if dt <= 0 or a.get(key) is None or b.get(key) is None:
            continue
        ts.append(b["t"])
        rs.append(max(0.0, (b[key] - a[key]) / dt))
    return ts, rs
