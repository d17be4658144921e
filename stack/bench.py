"""`xpemu bench`: how fast, how big, how close to the floor (BENCHMARKS.md explains each).

Every figure is printed next to a floor measured in the same run, as the median over
`repeats` runs:

1. floor: a guest `read` round trip against an echo process (the project's codec and
   transport, two processes): p50/p99 µs;
2. populate: a guest read of a `paged` gfn until its data returns, against real
   `python -m hv` and `python -m pager` processes (the pager serving from its store, page
   cache warm): p50/p99 µs with one vCPU and page-ins/s with 4 and 16 vCPUs at once;
3. page-out and proactive page-in throughput of a pager process per batch size, next to
   `pwrite` + `fdatasync` of the same batch on the same disk;
4. recovery: a new pager process started with N pages out and a guest vCPU waiting on the
   ring, until that vCPU's read returns;
5. memory: hv bytes per gfn of a 1,048,576-gfn domain, pager index bytes per paged gfn;
6. policy quality: faults per 1,000 accesses of the pager's own policy objects on a Zipf
   and a shifting hot-set trace, next to Belady's optimal on the same trace and memory,
   exact LRU, and on Zipf the best online policy (A0, knowing each gfn's probability).

Benchmarks are not tests: nothing here asserts a time. `run_bench` returns every figure
(also written by `--json`); `render_table` formats them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
import trio

from pager.policy import POLICIES
from protocol import MAX_AUDIT_COUNT, PAGE_SIZE, P2MType, pack_bits
from transport import Client, open_unix_client

from .argtypes import positive_float, positive_int
from .benchlib import (
    a0_faults,
    belady_faults,
    disk_of,
    hotset_trace,
    lru_faults,
    measure_disk_floor,
    measure_floor,
    median,
    open_echo,
    percentile,
    round_trips,
    zipf_ranking,
    zipf_trace,
)
from .procs import Child, ChildSet, open_children

log = structlog.get_logger("stack.bench")

#: The sections of the benchmark, in the order they run (`--only` picks some).
SECTIONS: Final = ("floor", "populate", "throughput", "recovery", "memory", "policy")

#: Blocks of echo round trips interleaved with each run of populates (the floor beside it).
POP_BLOCKS: Final = 5

#: Batch sizes of the throughput section (the issue's).
BATCHES: Final = (1, 16, 64, 256)

#: Seconds any one wait on the stack may take before the bench gives up with an error.
STEP_TIMEOUT: Final = 300.0

#: Seconds between two polls of hv's counters (a poll is one control round trip).
POLL: Final = 0.002

#: Poll interval of waits that take a second or more (at most 1% of the figure).
POLL_LONG: Final = 0.01

#: Size of the domain of the memory figure (4 GiB of guest memory).
MEMORY_GFNS: Final = 1 << 20


class BenchError(Exception):
    """The benchmark could not run (a process did not start, a wait timed out): one line."""


@dataclass
class Sizes:
    """How much of everything one mode measures."""

    repeats: int
    floor_n: int
    pop_samples: int
    pop_warm: int
    par_reads: int
    tput_pages: dict[int, int]
    recovery_pages: tuple[int, ...]
    policy_gfns: int
    policy_capacity: int
    policy_len: int
    vcpu_counts: tuple[int, ...] = (4, 16)


QUICK: Final = Sizes(
    repeats=3,
    floor_n=4000,
    pop_samples=1000,
    pop_warm=100,
    par_reads=1500,
    tput_pages={1: 300, 16: 3000, 64: 6000, 256: 12000},
    recovery_pages=(10_000, 100_000),
    policy_gfns=8192,
    policy_capacity=4096,
    policy_len=200_000,
)

FULL: Final = Sizes(
    repeats=5,
    floor_n=10_000,
    pop_samples=2000,
    pop_warm=200,
    par_reads=4000,
    tput_pages={1: 500, 16: 5000, 64: 20_000, 256: 40_000},
    recovery_pages=(10_000, 100_000),
    policy_gfns=16_384,
    policy_capacity=8192,
    policy_len=1_000_000,
)


@dataclass
class BenchOptions:
    """What `xpemu bench` was asked for."""

    full: bool = False
    repeats: int | None = None
    only: tuple[str, ...] = SECTIONS
    work_dir: Path | None = None  # where stores and floors go (default: a temp dir)
    profile: Path | None = None  # run hv and pagers under py-spy, raw stacks here
    policies: tuple[str, ...] = POLICIES
    sizes: Sizes = field(default_factory=lambda: QUICK)

    def __post_init__(self) -> None:
        if self.full and self.sizes is QUICK:
            self.sizes = FULL
        if self.repeats is not None:
            self.sizes = Sizes(**{**self.sizes.__dict__, "repeats": self.repeats})


# --- processes ---------------------------------------------------------------------------


class BenchStack:
    """One `python -m hv` with domain 1 and the pager processes run against it."""

    def __init__(
        self, children: ChildSet, run_dir: Path, name: str, profile: Path | None = None
    ) -> None:
        self.children = children
        self.profile = profile  # py-spy records hv and pager here (raw collapsed stacks)
        self.run_dir = run_dir
        self.name = name
        self.state_dir = run_dir / "state"
        self.hv: Child | None = None
        self.control: Client | None = None
        self.nr_gfns = 0
        self._pagers = 0

    async def start_hv(self, nr_gfns: int, vcpus: int, *, ring_size: int = 64) -> None:
        """Start hv and wait until both sockets answer a hello."""
        self.nr_gfns = nr_gfns
        argv = [sys.executable, "-m", "hv", "--run-dir", str(self.run_dir)]
        argv += ["--nr-gfns", str(nr_gfns), "--vcpus", str(vcpus)]
        argv += ["--ring-size", str(ring_size), "--log-level", "warning"]
        self.hv = self.children.add(f"{self.name}-hv", self._profiled(f"{self.name}-hv", argv))
        await self.hv.start()
        with trio.move_on_after(30) as waited:
            while not await self._hello_ok():
                if not self.hv.running:
                    raise BenchError(f"hv exited during start-up (log: {self.hv.log_path})")
                await trio.sleep(0.02)
        if waited.cancelled_caught:
            raise BenchError(f"hv did not become ready in 30 s (log: {self.hv.log_path})")

    async def _hello_ok(self) -> bool:
        paths = [self.run_dir / "privcmd.sock", self.run_dir / "guest.sock"]
        if not all(p.exists() for p in paths):
            return False
        try:
            async with open_unix_client(str(paths[1]), "guest") as c:
                await c.hello(1)
            return True
        except OSError:
            return False

    def pager_argv(
        self,
        *,
        batch: int = 64,
        policy: str = "xenpaging",
        target: int | None = None,
        log_level: str = "warning",
    ) -> list[str]:
        """The command line of a pager process on this stack's store."""
        argv = [sys.executable, "-m", "pager", "--run-dir", str(self.run_dir)]
        argv += ["--state-dir", str(self.state_dir), "--batch", str(batch)]
        argv += ["--policy", policy, "--log-level", log_level, "--on-exit", "keep"]
        if target is not None:
            argv += ["--target", str(target)]
        return argv

    async def start_pager(self, argv: list[str], *, profile: bool = True) -> Child:
        """Start a pager process (not waiting for it to attach)."""
        self._pagers += 1
        name = f"{self.name}-pager{self._pagers}"
        child = self.children.add(name, self._profiled(name, argv) if profile else argv)
        await child.start()
        return child

    def _profiled(self, name: str, argv: list[str]) -> list[str]:
        if self.profile is None:
            return argv
        out = str(self.profile / f"{name}.txt")
        spy = str(Path(sys.executable).with_name("py-spy"))
        return [spy, "record", "--format", "raw", "--rate", "250", "--output", out, "--", *argv]

    async def stop_profiled(self) -> None:
        """Stop each profiled child's Python process (not py-spy, which then writes out)."""
        if self.profile is None:
            return
        for child in self.children.children.values():
            if child.running and child.argv[0].endswith("py-spy") and child.pid is not None:
                for pid in _children_of(child.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                with trio.move_on_after(30):
                    await child.wait()

    async def counters(self) -> dict[str, Any]:
        """tot_pages, target, paged_pages of domain 1 (a control `audit` of no gfn)."""
        assert self.control is not None
        return await self.control.call("audit", domid=1, start=0, count=0)

    async def status(self) -> dict[str, Any]:
        """Domain 1's entry of hv's status."""
        assert self.control is not None
        return (await self.control.call("status"))["domains"][0]

    async def set_target(self, tot_pages: int) -> None:
        """Lower or raise domain 1's target (the pager follows it)."""
        assert self.control is not None
        await self.control.call("set_target", domid=1, tot_pages=tot_pages)

    async def wait_counters(
        self, pred: Callable[[dict[str, Any]], bool], what: str, *, every: float = POLL
    ) -> dict[str, Any]:
        """Poll hv's counters every `every` s until `pred` holds (no event crosses processes).

        Each poll costs hv one small request: long waits poll less often.
        """
        with trio.move_on_after(STEP_TIMEOUT):
            while True:
                c = await self.counters()
                if pred(c):
                    return c
                await trio.sleep(every)
        raise BenchError(f"{self.name}: timed out waiting for {what}")

    async def wait_status(self, pred: Callable[[dict[str, Any]], bool], what: str) -> None:
        """Poll hv's status of domain 1 until `pred` holds."""
        with trio.move_on_after(STEP_TIMEOUT):
            while not pred(await self.status()):  # noqa: ASYNC110 - hv is another process
                await trio.sleep(POLL)
            return
        raise BenchError(f"{self.name}: timed out waiting for {what}")

    async def wait_attached(self, pager: Child) -> None:
        """Wait until a pager is attached to domain 1."""
        with trio.move_on_after(60):
            while not (await self.status())["pager"]["attached"]:
                if not pager.running:
                    raise BenchError(f"the pager exited (log: {pager.log_path})")
                await trio.sleep(0.01)
            return
        raise BenchError(f"the pager did not attach in 60 s (log: {pager.log_path})")

    async def gfns_of_type(self, p2mt: int) -> list[int]:
        """Every gfn of domain 1 whose p2m type is `p2mt` (control `audit`)."""
        assert self.control is not None
        out: list[int] = []
        for start in range(0, self.nr_gfns, MAX_AUDIT_COUNT):
            count = min(MAX_AUDIT_COUNT, self.nr_gfns - start)
            reply = await self.control.call("audit", domid=1, start=start, count=count)
            types = reply["types"]
            out += [start + i for i, t in enumerate(types) if t == p2mt]
        return out


def _children_of(pid: int) -> list[int]:
    """The child pids of `pid` (Linux /proc), none if it is gone."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
    return out


@contextlib.asynccontextmanager
async def open_stack(
    work: Path, name: str, nr_gfns: int, vcpus: int, profile: Path | None = None
) -> AsyncIterator[BenchStack]:
    """hv started and a control connection open; every child reaped on exit."""
    run_dir = work / name
    run_dir.mkdir()
    async with open_children(run_dir) as children:
        stack = BenchStack(children, run_dir, name, profile)
        await stack.start_hv(nr_gfns, vcpus)
        async with open_unix_client(str(run_dir / "privcmd.sock"), "control") as control:
            await control.hello()
            stack.control = control
            yield stack
        with trio.CancelScope(shield=True):
            await stack.stop_profiled()


# --- 1. the floor --------------------------------------------------------------------------


async def bench_floor(sizes: Sizes, say: Callable[[str], None]) -> dict[str, Any]:
    """Round trips of a 4 KiB guest read against the echo process, `repeats` times."""
    runs = []
    for r in range(sizes.repeats):
        runs.append(await measure_floor(sizes.floor_n, PAGE_SIZE))
        say(f"  floor run {r + 1}: p50 {runs[-1]['p50_us']:.0f} µs")
    out = _med_runs(runs)
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


def _med_runs(
    runs: Sequence[dict[str, float]], keys: Sequence[str] = ("p50_us", "p99_us")
) -> dict[str, Any]:
    """The median over runs of each of `keys` (the runs kept for the JSON)."""
    return {**{k: median([r[k] for r in runs]) for k in keys}, "runs": list(runs)}


# --- 2. populate ---------------------------------------------------------------------------


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
            out["latency"] = _med_runs(lat_runs, list(lat_runs[0]))  # the echo's too
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


# --- 3. throughput -------------------------------------------------------------------------


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
                await stack.wait_counters(
                    lambda c, n=pages: c["paged_pages"] >= n, "page-out", every=POLL_LONG
                )
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


# --- 4. recovery ---------------------------------------------------------------------------


async def bench_recovery(sizes: Sizes, work: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Pager process start → first served request, per number of pages out."""
    out: dict[str, Any] = {}
    floor = await start_floor(sizes.repeats)
    say(f"  floor: a Python process importing the pager takes {floor:.3f} s")
    for pages in sizes.recovery_pages:
        out[pages] = await _recovery_one(pages, sizes.repeats, work, say)
        out[pages]["floor_start_s"] = floor
    return out


async def start_floor(repeats: int) -> float:
    """Seconds for `python -c "import pager.__main__"`: what any pager start costs before it
    can do anything (interpreter, trio, structlog, sqlite3), median of `repeats`."""
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
                internal.append(_recovered_seconds(pager.log_path))
        res["start_to_first_served_s"] = median(times)
        res["runs_s"] = times
        res["pager_recover_s"] = median([x for x in internal if x is not None] or [0.0])
        res["state_dir"] = str(stack.state_dir)
        say(
            f"  {pages} pages out: {res['start_to_first_served_s']:.3f} s to the first served"
            f" request (recover() {res['pager_recover_s']:.3f} s)"
        )
    return res


def _recovered_seconds(log_path: Path) -> float | None:
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


# --- 5. memory -----------------------------------------------------------------------------


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
    """The pager's in-memory index (rows and free list) per row, and on disk per row."""
    from pager.store import PageStore

    gc.collect()
    tracemalloc.start()
    store = PageStore.open(state_dir, lock_timeout=10)
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rows = len(store.rows)
    store.close()
    disk = sum(
        os.path.getsize(os.path.join(state_dir, n))
        for n in ("index.sqlite", "index.sqlite-wal")
        if os.path.exists(os.path.join(state_dir, n))
    )
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


# --- 6. policy quality ---------------------------------------------------------------------


class TraceMemory:
    """A memory of `capacity` frames driven by a trace through a real pager policy object.

    It does what the pager does around its policy: a touch sets the gfn's accessed bit
    (hv's EPT bit, set by every access, faulting or not); a miss is a fault: the gfn comes
    in (`paged_in`, as after a guest fault) and, the memory being over its size, the
    policy chooses victims (`paged_out`). The `accessed` callable reads and clears bits
    like hv's op. Memory starts empty, as Belady's count assumes: the first `capacity`
    misses are free of evictions but still count as faults, for every policy alike.
    """

    def __init__(self, policy_name: str, nr_gfns: int, capacity: int) -> None:
        from pager.policy import make_policy

        self.capacity = capacity
        self.resident: set[int] = set()
        self.bits = bytearray(nr_gfns)
        self.faults = 0
        self.policy = make_policy(policy_name, nr_gfns, self._accessed)
        for g in range(nr_gfns):
            self.policy.paged_out(g)  # nothing resident yet

    async def _accessed(self, start: int, count: int) -> bytes:
        window = self.bits[start : start + count]
        self.bits[start : start + count] = bytes(count)
        return pack_bits(window)

    async def run(self, trace: Sequence[int]) -> int:
        """Play the trace; the number of faults."""
        resident, bits, policy = self.resident, self.bits, self.policy
        for g in trace:
            bits[g] = 1
            if g not in resident:
                self.faults += 1
                resident.add(g)
                policy.paged_in(g)
                if len(resident) > self.capacity:
                    victims = await policy.choose(len(resident) - self.capacity, lambda _: False)
                    if not victims:
                        raise BenchError(f"{policy.name} chose no victim")
                    for v in victims:
                        resident.remove(v)  # KeyError: the policy chose a gfn not resident
                        policy.paged_out(v)
        return self.faults


async def bench_policy(
    sizes: Sizes, policies: Sequence[str], say: Callable[[str], None]
) -> dict[str, Any]:
    """Faults per 1,000 accesses on two traces: each policy next to Belady's optimal, exact
    LRU, and (Zipf only: its probabilities are known) the best online policy, A0."""
    n, cap, length = sizes.policy_gfns, sizes.policy_capacity, sizes.policy_len
    traces = {
        "zipf": zipf_trace(n, length, 0.99, seed=11),
        "hotset": hotset_trace(
            n, length, hot=cap // 2, shift_every=length // 10, hot_fraction=0.9, seed=12
        ),
    }
    out: dict[str, Any] = {
        "nr_gfns": n,
        "capacity": cap,
        "accesses": length,
        "traces": {},
    }
    for name, trace in traces.items():
        opt = belady_faults(trace, cap) * 1000 / length
        row: dict[str, Any] = {"belady": opt}
        bounds = {"lru": lru_faults(trace, cap)}
        if name == "zipf":
            bounds["a0"] = a0_faults(trace, cap, zipf_ranking(n, seed=11))
        runs = {}
        for p in policies:
            mem = TraceMemory(p, n, cap)
            runs[p] = await mem.run(trace)
        for p, faults in {**bounds, **runs}.items():
            row[p] = faults * 1000 / length
            row[f"{p}_ratio"] = row[p] / opt if opt else float("nan")
        out["traces"][name] = row
        say(
            f"  {name}: optimal {opt:.1f}/1000, "
            + ", ".join(
                f"{p} {row[p]:.1f} ({row[p + '_ratio']:.2f}x)" for p in (*bounds, *policies)
            )
        )
    return out


# --- the whole run -------------------------------------------------------------------------


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
        else:
            work = opts.work_dir
            work.mkdir(parents=True, exist_ok=True)
        res: dict[str, Any] = {
            "mode": "full" if opts.full else "quick",
            "repeats": sizes.repeats,
            "machine": machine_info(work),
        }
        t_start = time.perf_counter()
        recovery_store: str | None = None
        for section in SECTIONS:
            if section not in opts.only:
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
                recovery_store = res["recovery"][min(res["recovery"])]["state_dir"]
            elif section == "memory":
                res["memory"] = await bench_memory(recovery_store, say)
            elif section == "policy":
                res["policy"] = await bench_policy(sizes, opts.policies, say)
            res.setdefault("section_s", {})[section] = time.perf_counter() - t0
        res["total_s"] = time.perf_counter() - t_start
        res["machine"]["loadavg_end"] = os.getloadavg()
    return res


# --- the table -----------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return ""
    return f"{a / b:.2f}x"


_POLICY_LABELS: Final = {"a0": "online bound (A0)", "lru": "LRU (exact)"}


def table_rows(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, floor, ratio) rows from `run_bench`'s result."""
    rows: list[tuple[str, str, str, str]] = []
    floor = res.get("floor")
    if floor:
        rows.append(
            ("round trip p50 (echo, 4 KiB read)", f"{floor['p50_us']:.0f} µs", "(the floor)", "")
        )
        rows.append(
            ("round trip p99 (echo, 4 KiB read)", f"{floor['p99_us']:.0f} µs", "(the floor)", "")
        )
    pop = res.get("populate")
    if pop:
        lat = pop["latency"]
        # The echo measured between the populates when there is one (results before it
        # had only the floor section's, measured minutes apart).
        beside = "floor_p50_us" in lat
        src, note = (lat, " (beside)") if beside else (floor or {}, "")
        for q in ("p50", "p99"):
            f = src.get(f"floor_{q}_us" if beside else f"{q}_us")
            rows.append(
                (
                    f"populate {q}, 1 vCPU",
                    f"{lat[f'{q}_us']:.0f} µs",
                    f"{f:.0f} µs{note}" if f else "",
                    _ratio(lat[f"{q}_us"], f),
                )
            )
        for v in sorted(
            int(k.removeprefix("pageins_per_s_").removesuffix("vcpu"))
            for k in pop
            if k.startswith("pageins_per_s_") and k.endswith("vcpu")
        ):
            key = f"pageins_per_s_{v}vcpu"
            ceiling = floor.get(f"per_s_{v}vcpu") if floor else None
            rows.append(
                (
                    f"page-ins/s, {v} vCPUs",
                    f"{pop[key]:.0f}/s",
                    f"{ceiling:.0f} echo/s, {v} callers" if ceiling else "",
                    _ratio(pop[key], ceiling),
                )
            )
    tput = res.get("throughput")
    if tput:
        for batch, row in tput["batches"].items():
            rows.append(
                (
                    f"page-out, batch {batch}",
                    f"{row['pageout_pps']:.0f} pages/s",
                    f"{row['floor_pps']:.0f} pages/s",
                    _ratio(row["pageout_pps"], row["floor_pps"]),
                )
            )
            rows.append(
                (
                    f"page-in, batch {batch}",
                    f"{row['pagein_pps']:.0f} pages/s",
                    f"{row['floor_pps']:.0f} pages/s",
                    _ratio(row["pagein_pps"], row["floor_pps"]),
                )
            )
    rec = res.get("recovery")
    if rec:
        for pages, r in rec.items():
            rows.append(
                (
                    f"recovery, {int(pages):,} pages out",
                    f"{r['start_to_first_served_s']:.3f} s",
                    f"{r['floor_start_s']:.3f} s (start+imports)" if "floor_start_s" in r else "",
                    _ratio(r["start_to_first_served_s"], r.get("floor_start_s")),
                )
            )
            rows.append(
                ("  of which the pager's recover()", f"{r['pager_recover_s']:.3f} s", "", "")
            )
    mem = res.get("memory")
    if mem:
        hv = mem["hv"]
        rows.append(
            (
                f"hv bytes/gfn, {MEMORY_GFNS:,} gfns (RSS)",
                f"{hv['rss_per_gfn']:.1f} B",
                "8 B (a Xen EPT entry)",
                _ratio(hv["rss_per_gfn"], 8),
            )
        )
        rows.append(
            (
                "hv bytes/gfn (tracemalloc)",
                f"{hv['traced_per_gfn']:.1f} B",
                "8 B",
                _ratio(hv["traced_per_gfn"], 8),
            )
        )
        if "pager" in mem:
            pg = mem["pager"]
            rows.append(
                (
                    "pager index bytes/paged gfn (memory)",
                    f"{pg['memory_per_row']:.0f} B",
                    "16 B (gen+slot+crc packed)",
                    _ratio(pg["memory_per_row"], 16),
                )
            )
            rows.append(
                (
                    "pager index bytes/paged gfn (disk)",
                    f"{pg['disk_per_row']:.0f} B",
                    "16 B",
                    _ratio(pg["disk_per_row"], 16),
                )
            )
    pol = res.get("policy")
    if pol:
        for trace, row in pol["traces"].items():
            rows.append(
                (f"{trace}: Belady's optimal", f"{row['belady']:.1f} faults/1k", "(the floor)", "")
            )
            for p in ("a0", "lru", *POLICIES):
                if p in row:
                    rows.append(
                        (
                            f"{trace}: {_POLICY_LABELS.get(p, p)}",
                            f"{row[p]:.1f} faults/1k",
                            f"{row['belady']:.1f} faults/1k",
                            f"{row[p + '_ratio']:.2f}x",
                        )
                    )
    return rows


def render_table(res: dict[str, Any]) -> str:
    """The one table: each figure, its floor from the same run, the ratio."""
    m = res["machine"]
    head = (
        f"xpemu bench ({res['mode']}, median of {res['repeats']} runs) on {m['cores']} cores,"
        f" Python {m['python']}, disk {m['disk']}, load average"
        f" {' '.join(f'{x:.2f}' for x in m['loadavg_start'])} at start,"
        f" {' '.join(f'{x:.2f}' for x in m.get('loadavg_end', m['loadavg_start']))} at end;"
        f" {res.get('total_s', 0):.0f} s"
    )
    rows = [("figure", "value", "floor (same run)", "ratio"), *table_rows(res)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [head]
    for j, r in enumerate(rows):
        lines.append(
            "  ".join(
                (c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])) for i, c in enumerate(r)
            ).rstrip()
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    pol = res.get("policy")
    if pol:
        lines.append(
            f"policy traces: {pol['accesses']:,} accesses over {pol['nr_gfns']:,} gfns,"
            f" memory of {pol['capacity']:,} frames, the same for every policy"
        )
    return "\n".join(lines)


# --- probes (run in fresh processes by bench_memory) -----------------------------------------


def profile_summary(path: str, top: int = 15) -> str:
    """Where a py-spy raw profile (`--profile`) spends its samples: self and inclusive %."""
    import collections
    import re

    def short(frame: str) -> str:
        m = re.match(r"(.*) \((.*?):\d+\)$", frame)
        return f"{m.group(1)} ({'/'.join(m.group(2).split('/')[-2:])})" if m else frame

    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            frames = [short(fr) for fr in stack.split(";")]
            n = int(count)
            total += n
            own[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    out = [f"{path}: {total} samples", "  self:"]
    out += [f"  {100 * n / total:5.1f}% {fr}" for fr, n in own.most_common(top)]
    out.append("  inclusive:")
    out += [f"  {100 * n / total:5.1f}% {fr}" for fr, n in incl.most_common(2 * top)]
    return "\n".join(out)


def _probe_main(argv: list[str]) -> int:
    from transport import configure_logging

    configure_logging("bench-probe", level="error")  # stdout carries the JSON answer
    if len(argv) == 2 and argv[0] == "probe-hv-memory":
        print(json.dumps(probe_hv_memory(int(argv[1]))))
        return 0
    if len(argv) == 2 and argv[0] == "probe-pager-index":
        print(json.dumps(probe_pager_index(argv[1])))
        return 0
    if len(argv) >= 2 and argv[0] == "profile-summary":
        for path in argv[1:]:
            print(profile_summary(path))
        return 0
    print(
        "usage: python -m stack.bench probe-hv-memory N | probe-pager-index DIR"
        " | profile-summary FILE...",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))


# --- the command line (`xpemu bench`) -------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `xpemu bench`."""
    p.add_argument("--full", action="store_true", help="the long version (100,000-page recovery)")
    p.add_argument(
        "--soak",
        type=positive_float,
        metavar="MINUTES",
        help="instead: the stack at full load this long, each process's RSS growth per hour",
    )
    p.add_argument("--json", type=Path, dest="json_path", help="write every figure here")
    p.add_argument("--repeats", type=positive_int, help="runs per figure (3 quick, 5 full)")
    p.add_argument(
        "--only", type=_sections, default=SECTIONS, help=f"comma-separated: {','.join(SECTIONS)}"
    )
    p.add_argument("--work-dir", type=Path, help="stores and floor files here (same disk)")
    p.add_argument(
        "--profile",
        type=Path,
        help="record hv and pager processes with py-spy (must be installed) into this dir",
    )


def _sections(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in SECTIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section {', '.join(bad) or '(none)'}: choose from {','.join(SECTIONS)}"
        )
    return names


def main(args: argparse.Namespace) -> int:
    """`xpemu bench`: run, print the table, write the JSON; the exit status."""
    from transport import configure_logging

    if args.json_path is not None and not args.json_path.parent.is_dir():
        print(f"xpemu: error: no directory {args.json_path.parent} for --json", file=sys.stderr)
        return 2
    if args.soak is not None:
        from . import bench_soak

        return bench_soak.main(args.soak, args.work_dir, args.json_path)
    configure_logging("xpemu-bench", level="warning")
    opts = BenchOptions(
        full=args.full,
        repeats=args.repeats,
        only=args.only,
        work_dir=args.work_dir,
        profile=args.profile,
    )
    if args.profile is not None:
        if not Path(sys.executable).with_name("py-spy").exists():
            print("xpemu: error: --profile needs py-spy in the venv", file=sys.stderr)
            return 2
        args.profile.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        print(text, flush=True)

    try:
        res = trio.run(run_bench, opts, say)
    except BenchError as exc:
        print(f"xpemu: error: bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("xpemu: error: bench interrupted; every child stopped", file=sys.stderr)
        return 130
    say("")
    say(render_table(res))
    if args.json_path is not None:
        try:
            args.json_path.write_text(json.dumps(res, indent=2, default=str) + "\n")
        except OSError as exc:
            print(f"xpemu: error: cannot write {args.json_path}: {exc.strerror}", file=sys.stderr)
            return 1
    return 0
