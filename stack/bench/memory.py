"""Bench section 5, memory: hv bytes per gfn, pager index bytes per paged gfn (probes)."""

from __future__ import annotations

import gc
import json
import os
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any, Final

import trio

#: Size of the domain of the memory figure (4 GiB of guest memory).
MEMORY_GFNS: Final = 1 << 20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def probe_hv_memory(nr_gfns: int) -> dict[str, float]:
    """hv's bytes per gfn for a domain of `nr_gfns` (run in a fresh process)."""
    from hv import HvConfig, Hypervisor

    gc.collect()
    rss0 = _rss()
    tracemalloc.start()
    hv = Hypervisor(HvConfig(nr_gfns=nr_gfns, vcpus=4))
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    gc.collect()
    rss1 = _rss()
    hv.close()
    return {"traced_per_gfn": traced / nr_gfns, "rss_per_gfn": (rss1 - rss0) / nr_gfns}


def probe_pager_index(state_dir: str) -> dict[str, float]:
    """The pager's in-memory index (everything the open store holds) per row, and on disk
    per row (the pages file's header pages and meta.json)."""
    from pager import PageStore, RealDisk
    from pager.store import META, PAGES
    from pager.store_format import SLOT_SIZE, extents_in

    async def opened() -> tuple[int, int]:
        gc.collect()
        tracemalloc.start()
        store = await PageStore.open(RealDisk(state_dir), lock_wait=10)
        traced, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows = len(store.rows)
        await store.close()
        return traced, rows

    traced, rows = trio.run(opened)
    pages = os.path.join(state_dir, PAGES)
    disk = extents_in(os.path.getsize(pages)) * SLOT_SIZE if os.path.exists(pages) else 0
    if os.path.exists(os.path.join(state_dir, META)):
        disk += os.path.getsize(os.path.join(state_dir, META))
    return {
        "rows": rows,
        "memory_per_row": traced / max(rows, 1),
        "disk_per_row": disk / max(rows, 1),
    }


async def _probe(args: list[str]) -> dict[str, Any]:
    """Run a probe of this module in a fresh process; its JSON answer."""
    result = await trio.run_process(
        [sys.executable, "-m", "stack.bench", *args], capture_stdout=True, capture_stderr=True
    )
    return json.loads(result.stdout)


async def bench_memory(state_dir: str | None, say: Callable[[str], None]) -> dict[str, Any]:
    """hv per gfn for a 1 Mi-gfn domain; pager index per paged gfn (the recovery store)."""
    out: dict[str, Any] = {"hv": await _probe(["probe-hv-memory", str(MEMORY_GFNS)])}
    say(f"  hv: {out['hv']['rss_per_gfn']:.1f} bytes/gfn (RSS)")
    if state_dir is not None:
        out["pager"] = await _probe(["probe-pager-index", state_dir])
        say(f"  pager index: {out['pager']['memory_per_row']:.0f} bytes/row in memory")
    return out
