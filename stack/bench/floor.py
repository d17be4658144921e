"""Bench section 1, the floor: guest read round trips against an echo process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

from protocol import PAGE_SIZE
from transport import open_unix_client

from ..benchlib import (
    measure_floor,
    median,
)
from .options import BenchError, Sizes
from .procs import STEP_TIMEOUT


async def bench_floor(sizes: Sizes, say: Callable[[str], None]) -> dict[str, Any]:
    """Round trips of a 4 KiB guest read against the echo process, `repeats` times."""
    runs = []
    for r in range(sizes.repeats):
        runs.append(await measure_floor(sizes.floor_n, PAGE_SIZE))
        say(f"  floor run {r + 1}: p50 {runs[-1]['p50_us']:.0f} µs")
    out = med_runs(runs)
    for v in sizes.vcpu_counts:
        rates = [await measure_floor_parallel(sizes.floor_n, v) for _ in range(sizes.repeats)]
        out[f"per_s_{v}vcpu"] = median(rates)
        say(f"  floor with {v} callers: {median(rates):.0f} round trips/s")
    return out


async def measure_floor_parallel(n: int, vcpus: int) -> float:
    """Echo round trips per second with `vcpus` callers at once on one connection."""
    with tempfile.TemporaryDirectory(prefix="xpemu-floor-") as tmp:
        path = os.path.join(tmp, "echo.sock")
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "stack.benchlib", path], stdout=subprocess.PIPE
        )
        try:
            with trio.fail_after(STEP_TIMEOUT):
                assert proc.stdout is not None
                if not (await proc.stdout.receive_some(16)).startswith(b"ready"):
                    raise BenchError("the echo process did not start")
                async with open_unix_client(path, "guest") as client:
                    await client.hello(1)
                    left = iter(range(n))

                    async def caller() -> None:
                        for _ in left:
                            await client.call("read", vcpu=0, gfn=0, off=0, len=PAGE_SIZE)

                    t0 = time.perf_counter()
                    async with trio.open_nursery() as nursery:
                        for _ in range(vcpus):
                            nursery.start_soon(caller)
                    return n / (time.perf_counter() - t0)
        finally:
            proc.terminate()
            with trio.move_on_after(10):
                await proc.wait()
            proc.kill()


def med_runs(
    runs: Sequence[dict[str, float]], keys: Sequence[str] = ("p50_us", "p99_us")
) -> dict[str, Any]:
    """The median over runs of each of `keys` (the runs kept for the JSON)."""
    return {**{k: median([r[k] for r in runs]) for k in keys}, "runs": list(runs)}
