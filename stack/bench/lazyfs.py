"""Bench section 7: page-out through the lazy file system of power faults, beside the plain disk.

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

from ..benchlib import median
from ..power import PowerControl, fuse_problem
from .options import Sizes
from .procs import POLL_LONG, BenchStack, open_stack

#: The batch size of the figure (the pager's default, the issue's).
BATCH: Final = 64


async def bench_lazyfs(sizes: Sizes, work: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Page-out pages/s at batch 64: plain disk (the floor) and through the lazy FS."""
    problem = fuse_problem()
    if problem is not None:
        say(f"  skipped: {problem}")
        return {"skipped": problem}
    pages = sizes.tput_pages[BATCH]
    nr = pages + 1024
    runs: dict[str, list[float]] = {"plain": [], "lazy": []}
    async with (
        open_stack(work, "lazyfs-plain", nr, 2) as plain,
        open_stack(work, "lazyfs-lazy", nr, 2) as lazy,
        trio.open_nursery() as nursery,
    ):
        lazy.state_dir.mkdir()
        power = PowerControl(lazy.run_dir, 30.0, nursery)
        try:
            await power.open()
            stacks = {"plain": plain, "lazy": lazy}
            pagers = {
                m: await st.start_pager(st.pager_argv(batch=BATCH)) for m, st in stacks.items()
            }
            for m, st in stacks.items():
                await st.wait_attached(pagers[m])
            # Interleaved, so that both see the same machine (load comes and goes).
            for _ in range(sizes.repeats):
                for m, st in stacks.items():
                    runs[m].append(await _pageout(st, nr, pages))
            for pager in pagers.values():
                await pager.stop()
        finally:
            with trio.CancelScope(shield=True):
                await power.close()
            nursery.cancel_scope.cancel()
    out: dict[str, Any] = {"batch": BATCH, "pages": pages}
    for m, r in runs.items():
        out[f"{m}_pps"], out[f"{m}_runs"] = median(r), r
        say(f"  batch {BATCH}, {m}: out {out[f'{m}_pps']:.0f} pages/s")
    return out


async def _pageout(stack: BenchStack, nr: int, pages: int) -> float:
    """Pages/s of one page-out of `pages` pages (then everything is paged back in)."""
    t0 = time.perf_counter()
    await stack.set_target(nr - pages)
    await stack.wait_counters(lambda c: c["paged_pages"] >= pages, "page-out", every=POLL_LONG)
    pps = pages / (time.perf_counter() - t0)
    await stack.set_target(nr)
    await stack.wait_counters(lambda c: c["paged_pages"] == 0, "page-in", every=POLL_LONG)
    return pps


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
