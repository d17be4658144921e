"""The whole `xpemu bench` run: the sections asked for, in order, and the machine it ran on."""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from ..benchlib import (
    disk_of,
)
from .campaign import bench_campaign
from .floor import bench_floor
from .lazyfs import bench_lazyfs
from .memory import bench_memory
from .options import SECTIONS, BenchOptions
from .policy import bench_policy
from .populate import bench_populate
from .recovery import bench_recovery
from .sim import bench_sim
from .throughput import bench_throughput


def machine_info(work: Path) -> dict[str, Any]:
    """Cores, Python, disk and load average, for the table's header."""
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "disk": disk_of(str(work)),
        "loadavg_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


async def run_bench(opts: BenchOptions, say: Callable[[str], None]) -> dict[str, Any]:
    """Run the sections asked for; every figure as a dict (the JSON of `--json`)."""
    sizes = opts.sizes
    with contextlib.ExitStack() as stack:
        if opts.work_dir is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="xpemu-bench-"))
            work = Path(tmp)
        else:  # a fresh directory inside it per run: the sections make fixed names
            opts.work_dir.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix="b-", dir=opts.work_dir))  # short: socket paths
        res: dict[str, Any] = {
            "mode": "full" if opts.full else "quick",
            "repeats": sizes.repeats,
            "machine": machine_info(work),
        }
        t_start = time.perf_counter()
        recovery_store: str | None = None
        for section in SECTIONS:
            if section not in (opts.only or ()):
                continue
            say(f"{section}...")
            t0 = time.perf_counter()
            if section == "floor":
                res["floor"] = await bench_floor(sizes, say)
            elif section == "populate":
                res["populate"] = await bench_populate(sizes, work, say, opts.profile)
            elif section == "throughput":
                res["throughput"] = await bench_throughput(sizes, work, say, opts.profile)
            elif section == "recovery":
                res["recovery"] = await bench_recovery(sizes, work, say)
                # The largest store: the index's per-gfn cost, not its fixed overhead.
                recovery_store = res["recovery"][max(res["recovery"])]["state_dir"]
            elif section == "memory":
                res["memory"] = await bench_memory(recovery_store, say)
            elif section == "policy":
                res["policy"] = await bench_policy(sizes, opts.policies, say)
            elif section == "lazyfs":
                res["lazyfs"] = await bench_lazyfs(sizes, work, say)
            elif section == "sim":  # its own trio runs, under MockClock: in a thread
                res["sim"] = await trio.to_thread.run_sync(lambda: bench_sim(say, full=opts.full))
            elif section == "campaign":  # a Dask client of its own: in a thread too
                res["campaign"] = await trio.to_thread.run_sync(
                    lambda: bench_campaign(say, repeats=sizes.repeats, full=opts.full)
                )
            res.setdefault("section_s", {})[section] = time.perf_counter() - t0
        res["total_s"] = time.perf_counter() - t_start
        res["machine"]["loadavg_end"] = os.getloadavg()
    return res
