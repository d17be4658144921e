"""The `campaign` section: sim seeds per minute of `xpemu campaign` on 1 and 2 local workers.

Issue 17's figure: the 2-worker rate over the 1-worker rate (goal: at least 1.7x on a
2-core machine). The same `small` seeds run as campaign blocks (stack/campaign_child.py:
each block's seeds in a child forked from a Dask worker process) on a local cluster of 1,
then 2, workers, alternated `repeats` times; the cluster's start is not timed. The floor,
measured in the same run, is the same seeds run one after another in this process with
no Dask and no fork (one core); and, as the machine's own ceiling for the ratio, the same
seeds on two processes of a fork pool with no Dask (`xpemu sim --jobs 2`): what two cores
give over one here whatever the engine. On a loaded machine wall rates say what the other
processes left over; so each run also reports the workers' CPU seconds per seed (the
forked children's, and the worker processes' own for the Dask side), which load does not
stretch. Not in the quick default (it takes minutes on a loaded machine): `--only
campaign`, or `--full`.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any, Final

#: The seeds every run measures (small scenario, the campaign's default).
SEEDS: Final = range(1, 41)
SEEDS_FULL: Final = range(1, 121)
SCENARIO: Final = "small"


def _worker_cpu() -> float:
    """This worker process's CPU seconds, its reaped children's (the seeds) included."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _one_run(workers: int, seeds: list[int]) -> dict[str, Any]:
    """One campaign of `seeds` on a new local cluster of `workers`; wall from the first
    submit to the last result, and the workers' CPU over that span."""
    from stack.campaign import block_size, local_client
    from stack.campaign_seeds import default_timeout, run_block

    opts = {"scenario": SCENARIO, "ring_mode": None}
    timeout = default_timeout("sim", opts)
    size = block_size(len(seeds), workers)
    blocks = [seeds[i : i + size] for i in range(0, len(seeds), size)]
    client, cluster = local_client(workers)
    try:
        client.wait_for_workers(workers)
        cpu0 = client.run(_worker_cpu)
        t0 = time.perf_counter()
        futures = [
            client.submit(run_block, "sim", b, opts, timeout, key=f"bench-{workers}-{b[0]}")
            for b in blocks
        ]
        blocks_done = client.gather(futures)
        wall = time.perf_counter() - t0
        cpu1 = client.run(_worker_cpu)
        results = [r for done in blocks_done for r in done]
    finally:
        client.close()
        cluster.close()
    worker_cpu = sum(cpu1[w] - cpu0[w] for w in cpu1)
    return {
        "workers": workers,
        "seeds": len(results),
        "passed": sum(r["verdict"] == "passed" for r in results),
        "wall_s": wall,
        "seeds_per_min": 60 * len(results) / wall,
        "seed_cpu_s": sum(r["cpu_s"] for r in results) / len(results),
        "worker_cpu_s_per_seed": worker_cpu / len(results),
        "blocks": len(blocks),
    }


def bench_campaign(say: Callable[[str], None], *, repeats: int, full: bool) -> dict[str, Any]:
    """Run the section; its figures."""
    import logging

    from sim import run_seed
    from sim.runs import run_seeds

    # The nanny's "still alive after 4 s, killing" at a loaded cluster's close is not news.
    for name in ("distributed", "distributed.nanny"):
        logging.getLogger(name).setLevel(logging.ERROR)
    seeds = list(SEEDS_FULL if full else SEEDS)
    out: dict[str, Any] = {"scenario": SCENARIO, "seeds": len(seeds)}
    out["loadavg_start"] = os.getloadavg()
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    floors: list[dict[str, float]] = []
    for _ in range(repeats):  # alternated, so load that comes and goes hits both alike
        t0, c0 = time.perf_counter(), time.process_time()
        for s in seeds:
            run_seed(s, scenario=SCENARIO)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        t1 = time.perf_counter()
        run_seeds(seeds, scenario=SCENARIO, jobs=2)
        wall2 = time.perf_counter() - t1
        floors.append(
            {
                "seeds_per_min": 60 * len(seeds) / wall,
                "cpu_s_per_seed": cpu / len(seeds),
                "two_procs_seeds_per_min": 60 * len(seeds) / wall2,
            }
        )
        for workers in (1, 2):
            r = _one_run(workers, seeds)
            runs[workers].append(r)
            say(
                f"  campaign: {workers} worker(s) {r['seeds_per_min']:.0f} seeds/min "
                f"({r['seed_cpu_s']:.3f} CPU s per seed), floor "
                f"{floors[-1]['seeds_per_min']:.0f} seeds/min, load {os.getloadavg()[0]:.1f}"
            )
    out["loadavg_end"] = os.getloadavg()
    out["floor_seeds_per_min"] = statistics.median(f["seeds_per_min"] for f in floors)
    out["floor_cpu_s_per_seed"] = statistics.median(f["cpu_s_per_seed"] for f in floors)
    out["two_procs_seeds_per_min"] = statistics.median(f["two_procs_seeds_per_min"] for f in floors)
    out["two_procs_ratios"] = [f["two_procs_seeds_per_min"] / f["seeds_per_min"] for f in floors]
    for workers, rs in runs.items():
        out[f"w{workers}"] = {
            key: statistics.median(r[key] for r in rs)
            for key in ("seeds_per_min", "seed_cpu_s", "worker_cpu_s_per_seed", "wall_s")
        } | {"passed": min(r["passed"] for r in rs), "runs": rs}
    out["ratio_2_over_1"] = out["w2"]["seeds_per_min"] / out["w1"]["seeds_per_min"]
    # Each run's own ratio (runs alternate: neighbours saw about the same load).
    out["ratios"] = [
        b["seeds_per_min"] / a["seeds_per_min"] for a, b in zip(runs[1], runs[2], strict=True)
    ]
    return out


def campaign_rows(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, floor, ratio) rows of the section."""
    c = res.get("campaign")
    if not c:
        return []
    floor = c["floor_seeds_per_min"]
    rows = []
    for w in (1, 2):
        r = c[f"w{w}"]
        rows.append(
            (
                f"campaign seeds/min, {w} local worker(s), {c['seeds']} {c['scenario']} seeds",
                f"{r['seeds_per_min']:.0f}",
                f"{floor:.0f} (one core, no Dask)",
                f"{r['seeds_per_min'] / floor:.2f}x",
            )
        )
    rows.append(
        (
            "campaign: 2 workers over 1 worker (goal >= 1.7x)",
            f"{c['ratio_2_over_1']:.2f}x",
            "1.00x",
            "runs " + ", ".join(f"{x:.2f}x" for x in c["ratios"]),
        )
    )
    if "two_procs_seeds_per_min" in c:
        rows.append(
            (
                "  the machine's ceiling: 2 processes over 1, no Dask (sim --jobs 2)",
                f"{c['two_procs_seeds_per_min'] / floor:.2f}x",
                f"{c['two_procs_seeds_per_min']:.0f} / {floor:.0f} seeds/min",
                "runs " + ", ".join(f"{x:.2f}x" for x in c["two_procs_ratios"]),
            )
        )
    rows.append(
        (
            "  CPU s per seed: seed child (1 / 2 workers)",
            f"{c['w1']['seed_cpu_s']:.3f} / {c['w2']['seed_cpu_s']:.3f}",
            f"{c['floor_cpu_s_per_seed']:.3f} (in process)",
            f"{c['w2']['seed_cpu_s'] / c['floor_cpu_s_per_seed']:.2f}x",
        )
    )
    rows.append(
        (
            "  CPU s per seed: whole worker (1 / 2 workers)",
            f"{c['w1']['worker_cpu_s_per_seed']:.3f} / {c['w2']['worker_cpu_s_per_seed']:.3f}",
            f"{c['floor_cpu_s_per_seed']:.3f} (in process)",
            f"{c['w2']['worker_cpu_s_per_seed'] / c['floor_cpu_s_per_seed']:.2f}x",
        )
    )
    return rows


__all__ = ["bench_campaign", "campaign_rows"]
