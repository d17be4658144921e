"""Bench section 2, populate: a guest read of a paged gfn until its data returns.

Both ring modes (hv's `--ring-mode`, each at its default settings) and each vCPU count of
the sizes, in one table: page-ins/s next to an echo with as many callers, measured on the
same connection pattern in the same run, and the CPU time each process spends per page-in
next to the echo's CPU time per round trip (CPU time hardly moves with the other load of a
shared machine; wall time does).

Beside the echo (two one-way messages, caller -> echo -> caller) the relay floor
(`benchrelay`: caller -> relay -> backend -> relay -> caller, four messages through two
processes, no paging work): the physical floor of a populate with separate processes, with
the same callers, its latency with one caller and its CPU time per round trip.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import trio

from pager.balance import plan_step
from protocol import PAGE_SIZE, P2MType, RingMode
from transport import Client, open_unix_client

from ..benchlib import (
    open_echo,
    percentile,
    round_trips,
)
from ..benchrelay import open_relay
from .floor import med_runs
from .options import BenchError, Sizes
from .procs import BenchStack, children_of, open_stack

#: Blocks of echo round trips interleaved with each run of populates (the floor beside it).
POP_BLOCKS: Final = 5

#: The ring modes measured, each at hv's default settings (the first is hv's default).
RING_MODES: Final = (RingMode.reattach.value, RingMode.xen.value)

#: The pager's batch in this section (fast to page the samples out) and its reserve (the
#: pager's default, two batches), given explicitly: the latency samples wait for its
#: refills (`plan_step`).
POP_BATCH: Final = 256
POP_RESERVE: Final = 2 * POP_BATCH

#: The processes whose CPU time a page-in costs (the guest is this bench process).
CPU_PROCS: Final = ("hv", "pager", "guest")

#: The processes whose CPU time a relay round trip costs (the caller is this process).
RELAY_PROCS: Final = ("relay", "backend", "guest")


def cpu_seconds(pid: int) -> float:
    """CPU time `pid` has used so far, every thread: the scheduler's nanosecond clock
    (/proc/PID/task/*/schedstat), or utime+stime of /proc/PID/stat (10 ms ticks) without it."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        for task in tasks:
            with (
                contextlib.suppress(FileNotFoundError),
                open(f"/proc/{pid}/task/{task}/schedstat") as f,
            ):
                total += int(f.read().split()[0])
        return total / 1e9
    except OSError:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds of named processes between `start` and `stop`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._t0: dict[str, float] = {}

    def start(self) -> None:
        self._t0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) - self._t0[name] for name, pid in self.pids.items()}


def _python_pid(stack: BenchStack, pid: int) -> int:
    """The Python process of a child: itself, or py-spy's child under `--profile`."""
    if stack.profile is None:
        return pid
    kids = children_of(pid)
    if not kids:
        raise BenchError(f"no profiled process under py-spy {pid}")
    return kids[0]


def _echo_pid() -> int:
    """The echo process `open_echo` started (a child of this process; the relay floor's
    processes run the same module with an option first)."""
    for pid in children_of(os.getpid()):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
            if b"stack.benchlib" in argv and not any(a.startswith(b"--") for a in argv):
                return pid
    raise BenchError("the echo process is not a child of the bench")


async def bench_populate(
    sizes: Sizes, work: Path, say: Callable[[str], None], profile: Path | None = None
) -> dict[str, Any]:
    """Populate latency with one vCPU and page-ins/s with each vCPU count, on real
    processes, for each ring mode; the first mode's figures also at the top level.

    The pager holds the target with its reserve: once half of it is used by page-ins, it
    pages a batch out. The one-vCPU latency samples wait for such a refill to finish
    before the next read, so each sample is one populate against an otherwise idle pager;
    the page-ins/s runs do not wait (page-outs run alongside, as they would in a guest at
    its target, and their CPU time is in the pager's CPU per page-in).
    """
    modes: dict[str, Any] = {}
    for mode in RING_MODES:
        say(f"  ring mode {mode}:")
        modes[mode] = await _bench_mode(sizes, work, say, profile, mode)
    first = modes[RING_MODES[0]]
    out: dict[str, Any] = {k: first[k] for k in ("paged", "nr_gfns", "read_len", "latency")}
    for v in sizes.vcpu_counts:
        out[f"pageins_per_s_{v}vcpu"] = first["vcpus"][v]["pageins_per_s"]
    out["modes"] = modes
    return out


async def _bench_mode(
    sizes: Sizes, work: Path, say: Callable[[str], None], profile: Path | None, mode: str
) -> dict[str, Any]:
    per_run = sizes.pop_samples + sizes.pop_warm
    need = sizes.repeats * (per_run + len(sizes.vcpu_counts) * sizes.par_reads)
    paged_n = need + 64
    nr = paged_n + 4096
    vcpus = max(sizes.vcpu_counts)
    out: dict[str, Any] = {"paged": paged_n, "nr_gfns": nr, "read_len": PAGE_SIZE}
    name = "populate" if mode == RING_MODES[0] else f"populate-{mode}"
    async with open_stack(work, name, nr, vcpus, profile, ring_mode=mode) as stack:
        pager = await stack.start_pager(stack.pager_argv(batch=POP_BATCH, reserve=POP_RESERVE))
        await stack.wait_attached(pager)
        await stack.set_target(nr - paged_n)
        await stack.wait_counters(lambda c: c["paged_pages"] >= paged_n, "the first page-out")
        target = nr - paged_n
        paged = await stack.gfns_of_type(P2MType.paged)
        if len(paged) < need:
            raise BenchError(f"only {len(paged)} gfns paged, {need} needed")
        random.Random(7).shuffle(paged)  # no help from the store's slot order
        assert stack.hv is not None and stack.hv.pid is not None and pager.pid is not None
        pids = {
            "hv": _python_pid(stack, stack.hv.pid),
            "pager": _python_pid(stack, pager.pid),
            "guest": os.getpid(),
        }
        await stack.profile_guest()  # this process is the guest (under `--profile`)
        async with open_unix_client(str(stack.run_dir / "guest.sock"), "guest") as guest:
            await guest.hello(1)

            async def settled() -> None:
                # The pager has nothing left to do: any refill of its reserve is over.
                await stack.wait_counters(
                    lambda c: (
                        plan_step(c["tot_pages"], c["paged_pages"], target, POP_RESERVE) == 0
                        and c["paged_pages"] >= paged_n
                    ),
                    "the pager to hold the target",
                )

            lat_runs = []
            # The floor beside it: echo round trips in blocks between the blocks of
            # populates, so that both see the machine in the same state (this VM's speed
            # moves by 20% and more within minutes; the floor section runs minutes away).
            async with open_echo() as echo, open_relay() as relay:
                echo_cpu = CpuMeter({"echo": _echo_pid(), "guest": os.getpid()})
                relay_cpu = CpuMeter({**relay.pids, "guest": os.getpid()})
                await round_trips(echo, sizes.floor_n // 10, PAGE_SIZE)  # warm-up
                await round_trips(relay.client, sizes.floor_n // 10, PAGE_SIZE)
                block = -(-per_run // POP_BLOCKS)  # populates per block, rounded up
                for r in range(sizes.repeats):
                    samples: list[float] = []
                    floor: list[float] = []
                    relayed: list[float] = []
                    for i in range(per_run):
                        if i % block == 0:
                            n_block = sizes.floor_n // POP_BLOCKS
                            floor += await round_trips(echo, n_block, PAGE_SIZE)
                            relayed += await round_trips(relay.client, n_block, PAGE_SIZE)
                        dt = await _timed_read(guest, paged.pop())
                        if i >= sizes.pop_warm:
                            samples.append(dt)
                        await settled()
                    run = {
                        "p50_us": percentile(samples, 50) * 1e6,
                        "p99_us": percentile(samples, 99) * 1e6,
                        "floor_p50_us": percentile(floor, 50) * 1e6,
                        "floor_p99_us": percentile(floor, 99) * 1e6,
                        "relay_p50_us": percentile(relayed, 50) * 1e6,
                        "relay_p99_us": percentile(relayed, 99) * 1e6,
                    }
                    lat_runs.append(run)
                    say(
                        f"  populate run {r + 1}: p50 {run['p50_us']:.0f} µs,"
                        f" p99 {run['p99_us']:.0f} µs; echo beside it p50"
                        f" {run['floor_p50_us']:.0f} µs, p99 {run['floor_p99_us']:.0f} µs;"
                        f" relay p50 {run['relay_p50_us']:.0f} µs,"
                        f" p99 {run['relay_p99_us']:.0f} µs"
                    )
                out["latency"] = med_runs(lat_runs, list(lat_runs[0]))  # the echo's too
                out["vcpus"] = {}
                for v in sizes.vcpu_counts:
                    runs = []
                    for _ in range(sizes.repeats):
                        # The echo with as many callers first, then the relay, then the
                        # page-ins: each measured with its processes' CPU time.
                        echo_cpu.start()
                        echo_rate, n_echo = await _parallel_echo(echo, sizes.floor_n, v)
                        e_cpu = echo_cpu.stop()
                        relay_cpu.start()
                        relay_rate, n_relay = await _parallel_echo(relay.client, sizes.floor_n, v)
                        r_cpu = relay_cpu.stop()
                        gfns = [paged.pop() for _ in range(sizes.par_reads)]
                        meter = CpuMeter(pids)
                        meter.start()
                        rate = await _parallel_reads(guest, gfns, v)
                        cpu = meter.stop()
                        runs.append(
                            {
                                "pageins_per_s": rate,
                                "echo_per_s": echo_rate,
                                **{f"cpu_us_{p}": cpu[p] / len(gfns) * 1e6 for p in CPU_PROCS},
                                "echo_cpu_us_echo": e_cpu["echo"] / n_echo * 1e6,
                                "echo_cpu_us_guest": e_cpu["guest"] / n_echo * 1e6,
                                "relay_per_s": relay_rate,
                                **{
                                    f"relay_cpu_us_{p}": r_cpu[p] / n_relay * 1e6
                                    for p in RELAY_PROCS
                                },
                            }
                        )
                        await settled()
                    row = med_runs(runs, list(runs[0]))
                    out["vcpus"][v] = row
                    cpu_s = "+".join(f"{row[f'cpu_us_{p}']:.0f}" for p in CPU_PROCS)
                    relay_s = "+".join(f"{row[f'relay_cpu_us_{p}']:.0f}" for p in RELAY_PROCS)
                    say(
                        f"  {v} vCPUs: {row['pageins_per_s']:.0f} page-ins/s"
                        f" ({row['echo_per_s']:.0f} echo/s, {v} callers);"
                        f" CPU/page-in {cpu_s} µs (hv+pager+guest), echo CPU/rt"
                        f" {row['echo_cpu_us_echo']:.0f}+{row['echo_cpu_us_guest']:.0f} µs;"
                        f" {row['relay_per_s']:.0f} relay/s, relay CPU/rt {relay_s} µs"
                        " (relay+backend+caller)"
                    )
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


async def _parallel_echo(echo: Client, n: int, callers: int) -> tuple[float, int]:
    """`callers` tasks make `n` round trips between them on one connection to the echo (or
    the relay), as `_parallel_reads` does its page-ins: (round trips per second, n)."""
    left = iter(range(n))

    async def caller(v: int) -> None:
        for _ in left:
            await echo.call("read", vcpu=v, gfn=0, off=0, len=PAGE_SIZE)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for v in range(callers):
            nursery.start_soon(caller, v)
    return n / (time.perf_counter() - t0), n
