"""Bench section 3: page-out and proactive page-in per batch size, beside the disk floor."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from ..benchlib import (
    measure_disk_floor,
    median,
)
from .options import Sizes
from .procs import POLL_LONG, open_stack

#: Batch sizes of the throughput section (the issue's).
BATCHES: Final = (1, 16, 64, 256)


def _paged_at_least(n: int) -> Callable[[dict[str, Any]], bool]:
    """A wait condition: at least `n` gfns paged out."""
    return lambda c: c["paged_pages"] >= n


async def bench_throughput(
    sizes: Sizes, work: Path, say: Callable[[str], None], profile: Path | None = None
) -> dict[str, Any]:
    """Page-out and proactive page-in pages/s per batch size, next to the disk floor."""
    out: dict[str, Any] = {"batches": {}}
    for batch in BATCHES:
        pages = sizes.tput_pages[batch]
        nr = pages + 1024
        pageout, pagein, floor = [], [], []
        async with open_stack(work, f"tput{batch}", nr, 2, profile) as stack:
            pager = await stack.start_pager(stack.pager_argv(batch=batch))
            await stack.wait_attached(pager)
            for _ in range(sizes.repeats):
                # The floor first, in the same directory as the store (same disk, same run).
                floor.append(measure_disk_floor(str(stack.run_dir), batch, pages))
                t0 = time.perf_counter()
                await stack.set_target(nr - pages)
                await stack.wait_counters(_paged_at_least(pages), "page-out", every=POLL_LONG)
                pageout.append(pages / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                await stack.set_target(nr)
                await stack.wait_counters(
                    lambda c: c["paged_pages"] == 0, "page-in", every=POLL_LONG
                )
                pagein.append(pages / (time.perf_counter() - t0))
        row = {
            "pages": pages,
            "pageout_pps": median(pageout),
            "pagein_pps": median(pagein),
            "floor_pps": median(floor),
            "runs": {"pageout": pageout, "pagein": pagein, "floor": floor},
        }
        out["batches"][batch] = row
        say(
            f"  batch {batch}: out {row['pageout_pps']:.0f}/s, in {row['pagein_pps']:.0f}/s,"
            f" floor {row['floor_pps']:.0f}/s"
        )
    return out
