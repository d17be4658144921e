"""The `sim` section: seeds per minute of `xpemu sim`, and its speed-up over stress.

Figures, each next to a floor measured in the same run:

- seeds per minute of the default scenario (1,024 gfns, 4 vCPUs, 5,000 guest operations,
  at least 10 pager deaths and 2 power losses per seed) on one core, next to the same
  seeds with an empty plan (the workload and the checks alone: what the faults cost);
- the fault load of `xpemu stress --duration 40 --faults 24` replayed in the sim (the
  stress schedule of that seed, scaled into the scenario's window), in wall seconds, next
  to what the real-process run takes at least (its duration: the workload runs that long)
  and, with `--full`, the real run measured beside it;
- passes of trio's run loop per seed (each with an `epoll` poll): the same on every run of a
  seed whatever the machine's load, where the CPU time moves by 10-15% with the neighbours.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import trio

#: The stress run the sim is compared with (the issue's figure).
STRESS_DURATION: Final = 40.0
STRESS_FAULTS: Final = 24


class LoopPasses(trio.abc.Instrument):
    """Counts the passes of trio's run loop (one I/O poll each)."""

    def __init__(self) -> None:
        self.passes = 0

    def before_io_wait(self, timeout: float) -> None:
        """One pass."""
        self.passes += 1


def bench_sim(say: Callable[[str], None], *, full: bool) -> dict[str, Any]:
    """Run the section; its figures."""
    from sim import SCENARIOS, Plan, plan_from_json, run_seed
    from stack.schedule import make_schedule, schedule_to_list

    seeds = range(5 if full else 2)
    out: dict[str, Any] = {"scenario": "default", "seeds": len(seeds)}
    t0, c0 = time.perf_counter(), time.process_time()
    loop = LoopPasses()
    runs = [run_seed(s, scenario="default", instruments=[loop]) for s in seeds]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out["loop_passes_per_seed"] = loop.passes / len(runs)
    out["seeds_per_min"] = 60 * len(runs) / wall
    # The sim is one thread on one core: its CPU time is what it takes on an idle core,
    # whatever else the machine runs.
    out["seeds_per_cpu_min"] = 60 * len(runs) / cpu
    out["passed"] = sum(r.ok for r in runs)
    out["per_seed"] = [
        {
            k: r.to_dict()[k]
            for k in ("seed", "ok", "fired", "pager_lives", "guest_ops", "page_outs", "wall_s")
        }
        for r in runs
    ]
    say(f"  sim: {out['seeds_per_min']:.1f} seeds/min over {len(runs)} default seeds")
    t0, c0 = time.perf_counter(), time.process_time()
    for s in seeds:
        run_seed(s, scenario="default", plan=Plan())
    out["floor_seeds_per_min"] = 60 * len(seeds) / (time.perf_counter() - t0)
    out["floor_seeds_per_cpu_min"] = 60 * len(seeds) / (time.process_time() - c0)
    schedule = make_schedule(0, STRESS_DURATION, count=STRESS_FAULTS)
    doc = json.dumps({"seed": 0, "schedule": schedule_to_list(schedule)})
    plan, _ = plan_from_json(doc, window=SCENARIOS["default"].window)
    t0, c0 = time.perf_counter(), time.process_time()
    replay = run_seed(0, scenario="default", plan=plan)
    out["stress_replay_s"] = time.perf_counter() - t0
    out["stress_replay_cpu_s"] = time.process_time() - c0
    out["stress_replay_ok"] = replay.ok
    out["stress_replay_lives"] = replay.lives
    out["stress_min_s"] = STRESS_DURATION
    say(f"  sim: the stress fault load in {out['stress_replay_s']:.1f} s")
    if full:
        out["stress_real_s"] = _real_stress(say)
    return out


def _real_stress(say: Callable[[str], None]) -> float | None:
    """`xpemu stress --seed 0 --duration 40 --faults 24`, timed (None if it fails to run)."""
    with tempfile.TemporaryDirectory(prefix="xpemu-bench-stress-") as tmp:
        cmd = [
            sys.executable, "-m", "stack", "stress", "--seed", "0",
            "--duration", str(STRESS_DURATION), "--faults", str(STRESS_FAULTS),
            "--no-live", "--run-dir", str(Path(tmp) / "run"),
        ]  # fmt: skip
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        took = time.perf_counter() - t0
    if done.returncode not in (0, 1):
        say(f"  sim: the real stress run did not run ({done.stderr.strip()[-200:]})")
        return None
    return took


def sim_rows(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, floor, ratio) rows of the section."""
    sim = res.get("sim")
    if not sim:
        return []
    rows = [
        (
            f"sim seeds/min, default scenario ({sim['passed']}/{sim['seeds']} passed)",
            f"{sim['seeds_per_min']:.1f}",
            f"{sim['floor_seeds_per_min']:.1f} (no faults)",
            f"{sim['seeds_per_min'] / sim['floor_seeds_per_min']:.2f}x",
        ),
        (
            "sim seeds per CPU minute (one core's time)",
            f"{sim['seeds_per_cpu_min']:.1f}",
            f"{sim['floor_seeds_per_cpu_min']:.1f} (no faults)",
            f"{sim['seeds_per_cpu_min'] / sim['floor_seeds_per_cpu_min']:.2f}x",
        ),
    ]
    if "loop_passes_per_seed" in sim:
        rows.append(
            (
                "  trio run-loop passes per default seed (steady under load)",
                f"{sim['loop_passes_per_seed']:,.0f}",
                "",
                "",
            )
        )
    real = sim.get("stress_real_s")
    base = real if real else sim["stress_min_s"]
    rows.append(
        (
            f"stress --duration 40 --faults 24 in the sim ({sim['stress_replay_lives']} lives)",
            f"{sim['stress_replay_s']:.1f} s",
            f"{base:.0f} s ({'measured' if real else 'stress duration, at least'})",
            f"{base / sim['stress_replay_s']:.1f}x faster",
        )
    )
    rows.append(
        (
            "  the same, CPU time of the sim",
            f"{sim['stress_replay_cpu_s']:.1f} s",
            f"{base:.0f} s",
            f"{base / sim['stress_replay_cpu_s']:.1f}x faster",
        )
    )
    return rows


__all__ = ["LoopPasses", "bench_sim", "sim_rows"]
