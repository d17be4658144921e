"""Bench section 4, recovery: a new pager process's start to its first served request."""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from protocol import PAGE_SIZE, P2MType
from transport import open_unix_client

from ..benchlib import (
    median,
)
from .options import Sizes
from .procs import STEP_TIMEOUT, open_stack


async def bench_recovery(sizes: Sizes, work: Path, say: Callable[[str], None]) -> dict[int, Any]:
    """Pager process start → first served request, per number of pages out."""
    out: dict[int, Any] = {}
    floor = await start_floor(sizes.repeats)
    say(f"  floor: a Python process importing the pager takes {floor:.3f} s")
    for pages in sizes.recovery_pages:
        out[pages] = await _recovery_one(pages, sizes.repeats, work, say)
        out[pages]["floor_start_s"] = floor
    return out


async def start_floor(repeats: int) -> float:
    """Seconds for `python -c "import pager.__main__"`: what any pager start costs before it
    can do anything (interpreter, trio, structlog, crc32c), median of `repeats`."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        await trio.run_process([sys.executable, "-c", "import pager.__main__"])
        times.append(time.perf_counter() - t0)
    return median(times)


async def _recovery_one(
    pages: int, repeats: int, work: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    nr = pages + 1024
    res: dict[str, Any] = {"pages": pages}
    async with open_stack(work, f"recovery{pages}", nr, 2) as stack:
        argv = stack.pager_argv(batch=256, target=nr - pages, log_level="info")
        pager = await stack.start_pager(argv, profile=False)
        await stack.wait_attached(pager)
        t0 = time.perf_counter()
        await stack.wait_counters(lambda c: c["paged_pages"] >= pages, "the first page-out")
        res["setup_pageout_s"] = time.perf_counter() - t0
        paged = await stack.gfns_of_type(P2MType.paged)
        random.Random(3).shuffle(paged)
        times, internal = [], []
        async with open_unix_client(str(stack.run_dir / "guest.sock"), "guest") as guest:
            await guest.hello(1)
            for _ in range(repeats):
                await stack.wait_counters(
                    lambda c: c["paged_pages"] >= pages and c["tot_pages"] <= nr - pages,
                    "the pager to settle",
                )
                pager.kill()  # a crash: the store is left as it is
                await pager.wait()
                gfn = paged.pop()
                done = trio.Event()

                async def touch(gfn: int = gfn, done: trio.Event = done) -> None:
                    await guest.call("read", vcpu=0, gfn=gfn, off=0, len=PAGE_SIZE)
                    done.set()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(touch)
                    # The read is on the ring once hv counts the vCPU as paused.
                    await stack.wait_status(lambda st: st["ring"]["used"] >= 1, "the request")
                    t0 = time.perf_counter()
                    pager = await stack.start_pager(argv, profile=False)
                    with trio.fail_after(STEP_TIMEOUT):
                        await done.wait()
                    times.append(time.perf_counter() - t0)
                internal.append(recovered_seconds(pager.log_path))
        res["start_to_first_served_s"] = median(times)
        res["runs_s"] = times
        res["pager_recover_s"] = median([x for x in internal if x is not None] or [0.0])
        res["state_dir"] = str(stack.state_dir)
        say(
            f"  {pages} pages out: {res['start_to_first_served_s']:.3f} s to the first served"
            f" request (recover() {res['pager_recover_s']:.3f} s)"
        )
    return res


def recovered_seconds(log_path: Path) -> float | None:
    """The `seconds` of the last `pager.recovered` line of a pager's JSON log."""
    found = None
    try:
        with open(log_path) as f:
            for line in f:
                if '"pager.recovered"' in line:
                    with contextlib.suppress(ValueError, KeyError):
                        found = float(json.loads(line)["seconds"])
    except OSError:
        return None
    return found
