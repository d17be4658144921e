"""The bench's `lazyfs` section: what the lazy file system of power faults costs.

Page-out throughput at batch 64 of the same pager process, once on the plain disk and once
through the lazy file system (stack/lazyfs.py) mounted under its state directory, in the
same run, so that users know how much slower `xpemu stress --kinds power` pages out.
Skipped, with the reason, where FUSE is not usable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import trio

from .bench import POLL_LONG, Sizes, median, open_stack
from .power import PowerControl, fuse_problem

#: The batch size of the figure (the pager's default, the issue's).
BATCH: Final = 64


async def bench_lazyfs(sizes: Sizes, work: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Page-out pages/s at batch 64: plain disk (the floor) and through the lazy FS."""
    problem = fuse_problem()
    if problem is not None:
        say(f"  skipped: {problem}")
        return {"skipped": problem}
    pages = sizes.tput_pages[BATCH]
    out: dict[str, Any] = {"batch": BATCH, "pages": pages}
    for mode in ("plain", "lazy"):
        runs = await _pageouts(sizes.repeats, pages, work, mode)
        out[f"{mode}_pps"] = median(runs)
        out[f"{mode}_runs"] = runs
        say(f"  batch {BATCH}, {mode}: out {out[f'{mode}_pps']:.0f} pages/s")
    return out


async def _pageouts(repeats: int, pages: int, work: Path, mode: str) -> list[float]:
    """Pages/s of `repeats` page-outs of `pages` pages by one pager process."""
    nr = pages + 1024
    runs = []
    async with open_stack(work, f"lazyfs-{mode}", nr, 2) as stack, trio.open_nursery() as nursery:
        power = None
        if mode == "lazy":
            stack.state_dir.mkdir()
            power = PowerControl(stack.run_dir, 30.0, nursery)
            await power.open()
        try:
            pager = await stack.start_pager(stack.pager_argv(batch=BATCH))
            await stack.wait_attached(pager)
            for _ in range(repeats):
                t0 = time.perf_counter()
                await stack.set_target(nr - pages)
                await stack.wait_counters(
                    lambda c: c["paged_pages"] >= pages, "page-out", every=POLL_LONG
                )
                runs.append(pages / (time.perf_counter() - t0))
                await stack.set_target(nr)
                await stack.wait_counters(
                    lambda c: c["paged_pages"] == 0, "page-in", every=POLL_LONG
                )
            await pager.stop()
        finally:
            if power is not None:
                with trio.CancelScope(shield=True):
                    await power.close()
            nursery.cancel_scope.cancel()
    return runs


def lazyfs_rows(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The section's rows of the bench table: (figure, value, floor, ratio)."""
    lz = res.get("lazyfs")
    if not lz or "skipped" in lz:
        return []
    return [
        (
            f"page-out, batch {BATCH}, lazy FS (power faults)",
            f"{lz['lazy_pps']:.0f} pages/s",
            f"{lz['plain_pps']:.0f} pages/s (plain disk)",
            f"{lz['lazy_pps'] / lz['plain_pps']:.2f}x" if lz["plain_pps"] else "",
        )
    ]
