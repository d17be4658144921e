"""Bench section 2, populate: a guest read of a paged gfn until its data returns."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import trio

from protocol import PAGE_SIZE, P2MType
from transport import Client, open_unix_client

from ..benchlib import (
    median,
    open_echo,
    percentile,
    round_trips,
)
from .floor import med_runs
from .options import BenchError, Sizes
from .procs import open_stack

#: Blocks of echo round trips interleaved with each run of populates (the floor beside it).
POP_BLOCKS: Final = 5


async def bench_populate(
    sizes: Sizes, work: Path, say: Callable[[str], None], profile: Path | None = None
) -> dict[str, Any]:
    """Populate latency with one vCPU and page-ins/s with several, on real processes.

    The pager holds the target: after each page-in it pages one other gfn out. The
    one-vCPU samples wait for that to finish before the next read, so each sample is one
    populate against an otherwise idle pager; the many-vCPU runs do not wait (page-outs
    run alongside, as they would in a guest at its target).
    """
    per_run = sizes.pop_samples + sizes.pop_warm
    need = sizes.repeats * (per_run + len(sizes.vcpu_counts) * sizes.par_reads)
    paged_n = need + 64
    nr = paged_n + 4096
    vcpus = max(sizes.vcpu_counts)
    out: dict[str, Any] = {"paged": paged_n, "nr_gfns": nr, "read_len": PAGE_SIZE}
    async with open_stack(work, "populate", nr, vcpus, profile) as stack:
        pager = await stack.start_pager(stack.pager_argv(batch=256))
        await stack.wait_attached(pager)
        await stack.set_target(nr - paged_n)
        await stack.wait_counters(lambda c: c["paged_pages"] >= paged_n, "the first page-out")
        target = nr - paged_n
        paged = await stack.gfns_of_type(P2MType.paged)
        if len(paged) < need:
            raise BenchError(f"only {len(paged)} gfns paged, {need} needed")
        random.Random(7).shuffle(paged)  # no help from the store's slot order
        async with open_unix_client(str(stack.run_dir / "guest.sock"), "guest") as guest:
            await guest.hello(1)

            async def settled() -> None:
                await stack.wait_counters(
                    lambda c: c["tot_pages"] <= target and c["paged_pages"] >= paged_n,
                    "the pager to hold the target",
                )

            lat_runs = []
            # The floor beside it: echo round trips in blocks between the blocks of
            # populates, so that both see the machine in the same state (this VM's speed
            # moves by 20% and more within minutes; the floor section runs minutes away).
            async with open_echo() as echo:
                await round_trips(echo, sizes.floor_n // 10, PAGE_SIZE)  # warm-up
                block = -(-per_run // POP_BLOCKS)  # populates per block, rounded up
                for r in range(sizes.repeats):
                    samples: list[float] = []
                    floor: list[float] = []
                    for i in range(per_run):
                        if i % block == 0:
                            floor += await round_trips(echo, sizes.floor_n // POP_BLOCKS, PAGE_SIZE)
                        dt = await _timed_read(guest, paged.pop())
                        if i >= sizes.pop_warm:
                            samples.append(dt)
                        await settled()
                    run = {
                        "p50_us": percentile(samples, 50) * 1e6,
                        "p99_us": percentile(samples, 99) * 1e6,
                        "floor_p50_us": percentile(floor, 50) * 1e6,
                        "floor_p99_us": percentile(floor, 99) * 1e6,
                    }
                    lat_runs.append(run)
                    say(
                        f"  populate run {r + 1}: p50 {run['p50_us']:.0f} µs,"
                        f" p99 {run['p99_us']:.0f} µs; echo beside it p50"
                        f" {run['floor_p50_us']:.0f} µs, p99 {run['floor_p99_us']:.0f} µs"
                    )
            out["latency"] = med_runs(lat_runs, list(lat_runs[0]))  # the echo's too
            for v in sizes.vcpu_counts:
                rates = []
                for _ in range(sizes.repeats):
                    gfns = [paged.pop() for _ in range(sizes.par_reads)]
                    rates.append(await _parallel_reads(guest, gfns, v))
                    await settled()
                out[f"pageins_per_s_{v}vcpu"] = median(rates)
                out[f"pageins_per_s_{v}vcpu_runs"] = rates
                say(f"  {v} vCPUs: {median(rates):.0f} page-ins/s")
        out["pager_log"] = str(pager.log_path)
    return out


async def _timed_read(guest: Client, gfn: int) -> float:
    """Seconds for one 4 KiB guest read of gfn (BenchError if the data is short)."""
    t0 = time.perf_counter()
    reply = await guest.call("read", vcpu=0, gfn=gfn, off=0, len=PAGE_SIZE)
    dt = time.perf_counter() - t0
    if len(reply["data"]) != PAGE_SIZE:
        raise BenchError(f"read of gfn {gfn} returned {len(reply['data'])} bytes")
    return dt


async def _parallel_reads(guest: Client, gfns: Sequence[int], vcpus: int) -> float:
    """`vcpus` vCPUs read `gfns` (each paged) between them; page-ins per second."""
    it = iter(gfns)

    async def vcpu(v: int) -> None:
        for gfn in it:
            await guest.call("read", vcpu=v, gfn=gfn, off=0, len=PAGE_SIZE)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for v in range(vcpus):
            nursery.start_soon(vcpu, v)
    return len(gfns) / (time.perf_counter() - t0)
