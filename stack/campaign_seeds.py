"""Where a campaign's seeds run, on a Dask worker: one result dict per seed, hung ones too.

`run_block` is the task `xpemu campaign` submits. Its **sim** seeds run in a child forked
from the worker (stack/campaign_child.py: a CPU bound per seed, a blocked child replaced).

A **stress** seed is an `xpemu stress` process (three more of its own); its bound is wall
seconds (a real run takes real time): SIGTERM (the stack stops its children), then
SIGKILL (its guardian stops them). A failing run's directory is kept, and named.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

from .campaign_child import SimChild, result

#: Seconds a timed-out `xpemu stress` has after SIGTERM before SIGKILL.
STRESS_GRACE_S: Final = 15.0


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except ValueError:  # not inside a Dask worker (called directly)
        return f"{socket.gethostname()} pid {os.getpid()}"


def run_block(
    kind: str, seeds: list[int], options: dict[str, Any], timeout: float
) -> list[dict[str, Any]]:
    """Run a block of seeds of `kind` ("sim" or "stress"); one result per seed, in order.
    `timeout` is each seed's bound: CPU seconds for sim, wall seconds for stress."""
    worker = _worker_name()
    if kind == "stress":
        return [stress_seed(seed, options, timeout, worker) for seed in seeds]
    child = SimChild(options, timeout)
    try:
        return [child.run(seed, worker) for seed in seeds]
    finally:
        child.close()


# ------------------------------------------------------------------------- stress seeds


def stress_argv(options: dict[str, Any]) -> list[str]:
    """`xpemu stress`'s options for a campaign's stress options (after `--seed N`)."""
    argv: list[str] = []
    for flag, key in (
        ("--duration", "duration"),
        ("--faults", "faults"),
        ("--kinds", "kinds"),
        ("--nr-gfns", "nr_gfns"),
        ("--ring-mode", "ring_mode"),
    ):
        if options.get(key) is not None:
            value = options[key]
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return argv


def stress_seed(seed: int, options: dict[str, Any], timeout: float, worker: str) -> dict[str, Any]:
    """Run `xpemu stress --seed SEED ...` as a process; its result row."""
    base = Path(tempfile.mkdtemp(prefix=f"xpemu-campaign-stress-{seed}-"))
    argv = [sys.executable, "-m", "stack", "stress", "--seed", str(seed), *stress_argv(options)]
    argv += ["--run-dir", str(base / "run"), "--report", str(base / "report.json"), "--no-live"]
    t0 = time.perf_counter()
    timed_out = False
    with open(base / "output.txt", "wb") as output:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
        )
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.terminate()
            try:
                rc = proc.wait(STRESS_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
    wall = round(time.perf_counter() - t0, 4)
    try:
        report = json.loads((base / "report.json").read_text())
    except (OSError, ValueError):
        report = None
    verdict = {0: "passed", 1: "failed"}.get(rc, "error")
    if timed_out:
        verdict = "timeout"
    out = result(seed, verdict, worker)
    out["duration_s"] = wall
    if report is not None:
        out["faults"] = dict(sorted(report.get("faults_injected", {}).items()))
        out["crash_points"] = _stress_crash_points(report)
        out["lost_gfns"] = int(report.get("lost_gfns") or 0)
        # Stress is not deterministic: what stands in for a trace hash is the hash of the
        # seed's fault schedule (the same seed and options give the same one).
        schedule = json.dumps(report.get("schedule", []), sort_keys=True).encode()
        out["trace_hash"] = "schedule:" + hashlib.sha256(schedule).hexdigest()[:32]
    if verdict == "passed":
        shutil.rmtree(base, ignore_errors=True)
    else:
        out["failures"] = [
            f"{_stress_failure(verdict, rc, report, base, timeout)}; run dir "
            f"{socket.gethostname()}:{base}"
        ]
    return out


def _stress_crash_points(report: dict[str, Any]) -> dict[str, int]:
    """Crash points that fired, by name, from the pager lives the report lists."""
    fired: Counter[str] = Counter()
    for life in report.get("pager", {}).get("lives", []):
        if life.get("cause") == "crash_point" and life.get("spec"):
            fired[str(life["spec"]).partition("@")[0]] += 1
    return dict(sorted(fired.items()))


def _stress_failure(
    verdict: str, rc: int, report: dict[str, Any] | None, base: Path, timeout: float
) -> str:
    if verdict == "timeout":
        return f"no verdict within {timeout:g} wall seconds: xpemu stress stopped"
    if report is not None and report.get("violations"):
        return str(report["violations"][0])
    if report is not None and verdict == "failed":
        return (
            f"integrity errors {report.get('integrity_errors')}, lost gfns "
            f"{report.get('lost_gfns')}, stuck vCPUs {report.get('stuck_vcpus')}"
        )
    lines = (base / "output.txt").read_text(errors="replace").strip().splitlines()
    return f"xpemu stress exited {rc}: " + (lines[-1] if lines else "no output")


def typical_cpu_s(scenario: str) -> float:
    """A seed's usual CPU seconds in `scenario` (measured here: the median of 20 seeds on
    one core; the default bound is ten times this, and never under `MIN_SEED_TIMEOUT`)."""
    return TYPICAL_CPU_S.get(scenario, 6.0)


#: Median CPU seconds of one seed per scenario (20 seeds, this 2-core machine, Dec 2026).
TYPICAL_CPU_S: Final = {"tiny": 0.12, "small": 0.25, "default": 2.5}
#: The default per-seed bound is never under this (CPU seconds, sim; GC and imports).
MIN_SEED_TIMEOUT: Final = 10.0


def default_timeout(kind: str, options: dict[str, Any]) -> float:
    """The per-seed bound when `--seed-timeout` is not given."""
    if kind == "stress":
        return 2 * float(options["duration"]) + 60.0  # start, checks, page-in, under load
    return max(MIN_SEED_TIMEOUT, math.ceil(10 * typical_cpu_s(options["scenario"])))


__all__ = ["SimChild", "default_timeout", "result", "run_block", "stress_argv", "stress_seed"]
