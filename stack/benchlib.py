"""Building blocks of `xpemu bench` that need no hypervisor: the floors and the traces.

- the request/reply floor: a second process echoes `read` replies over a Unix socket with
  the project's own codec and transport, so populate latency can be set against it (the
  relay floor, four one-way messages through two processes, is in `benchrelay`);
- the disk floor: `pwrite` of a batch of 4 KiB pages plus one `fdatasync`, on the same disk
  as the pager's store;
- access traces (Zipf, shifting hot set) and Belady's optimal replacement on them, the
  floor for a replacement policy's fault count.
"""

from __future__ import annotations

import bisect
import collections
import heapq
import itertools
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial

import trio

from protocol import PAGE_SIZE, ok_reply, parse_request
from transport import Client, ConnectionClosed, open_connection, open_unix_client, serve_unix

from .benchrelay import floor_process, floor_server_main


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; 0.0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize_us(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p99/max of samples in seconds, as microseconds."""
    return {
        "p50_us": percentile(samples_s, 50) * 1e6,
        "p99_us": percentile(samples_s, 99) * 1e6,
        "max_us": max(samples_s, default=0.0) * 1e6,
        "n": len(samples_s),
    }


# --- the request/reply floor -------------------------------------------------------------


async def _echo_handler(stream: trio.SocketStream) -> None:
    async with open_connection(stream) as conn:
        while True:
            try:
                msg = await conn.receive()
            except ConnectionClosed:
                return
            req = parse_request(msg, "guest" if msg.get("op") != "hello" else msg.get("role", ""))
            if req.op == "hello":
                reply = ok_reply(req.id, v=1, domid=1, nr_gfns=1, vcpus=1, page_size=PAGE_SIZE)
                conn.send_nowait({**reply, "ring_size": 0, "instance": "echo"})
            else:
                conn.send_nowait(ok_reply(req.id, data=bytes(req.args["len"])))


async def _serve_echo(path: str) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_unix, path, _echo_handler, mode=0o600))
        print("ready", flush=True)  # the parent waits for this line, not for the file


def echo_server_main(path: str) -> None:
    """Entry point of the echo process (`python -m stack.benchlib PATH`)."""
    trio.run(_serve_echo, path)


@asynccontextmanager
async def open_echo() -> AsyncIterator[Client]:
    """A client of the echo process (the floor's server), ready and said hello."""
    with tempfile.TemporaryDirectory(prefix="xpemu-floor-") as tmp:
        path = os.path.join(tmp, "echo.sock")
        async with floor_process([path]), open_unix_client(path, "guest") as client:
            with trio.fail_after(30):
                await client.hello(1)
            yield client


async def round_trips(client: Client, n: int, read_len: int) -> list[float]:
    """Seconds of each of `n` guest `read`s of `read_len` bytes against the echo."""
    samples = []
    with trio.fail_after(30 + n / 1000):
        for _ in range(n):
            t0 = time.perf_counter()
            await client.call("read", vcpu=0, gfn=0, off=0, len=read_len)
            samples.append(time.perf_counter() - t0)
    return samples


async def measure_floor(n: int, read_len: int) -> dict[str, float]:
    """Round trips of a guest `read` of `read_len` bytes against an echo in another process."""
    async with open_echo() as client:
        samples = await round_trips(client, n + n // 10, read_len)
    return summarize_us(samples[n // 10 :])  # the first tenth warms up


# --- the disk floor ----------------------------------------------------------------------


def measure_disk_floor(directory: str, batch: int, total_pages: int) -> float:
    """Pages/s for `pwrite` of `batch` 4 KiB pages then one `fdatasync`, repeated."""
    page = os.urandom(PAGE_SIZE)
    fd, path = tempfile.mkstemp(prefix="xpemu-floor-", dir=directory)
    try:
        batches = max(1, total_pages // batch)
        t0 = time.perf_counter()
        for b in range(batches):
            base = (b * batch) % 65536
            for i in range(batch):
                os.pwrite(fd, page, (base + i) * PAGE_SIZE)
            os.fdatasync(fd)
        return batches * batch / (time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)


# --- traces and Belady's optimal ---------------------------------------------------------


def zipf_ranking(n_gfns: int, seed: int) -> list[int]:
    """The gfn of each popularity rank (index 0: the most probable) in `zipf_trace(n_gfns,
    ..., seed)`: the generator's own permutation, not a count taken from the trace."""
    gfn_of_rank = list(range(n_gfns))
    random.Random(seed).shuffle(gfn_of_rank)
    return gfn_of_rank


def zipf_trace(n_gfns: int, length: int, s: float, seed: int) -> list[int]:
    """`length` accesses over `n_gfns` gfns, gfn rank r drawn with weight 1/r**s.

    Ranks are scattered over the gfn space by a seeded permutation (`zipf_ranking`), so
    that a sweep in gfn order (xenpaging's) gets no help from hot gfns lying together.
    """
    rng = random.Random(seed)
    cumulative = list(itertools.accumulate(1.0 / (r**s) for r in range(1, n_gfns + 1)))
    total = cumulative[-1]
    gfn_of_rank = list(range(n_gfns))
    rng.shuffle(gfn_of_rank)  # the same draws as zipf_ranking's, then the same rng goes on
    return [
        gfn_of_rank[bisect.bisect_left(cumulative, rng.random() * total)] for _ in range(length)
    ]


def hotset_trace(
    n_gfns: int, length: int, hot: int, shift_every: int, hot_fraction: float, seed: int
) -> list[int]:
    """A hot set of `hot` gfns taking `hot_fraction` of accesses, moved every `shift_every`."""
    rng = random.Random(seed)
    out = []
    start = 0
    for i in range(length):
        if i and i % shift_every == 0:
            start = rng.randrange(n_gfns)
        if rng.random() < hot_fraction:
            out.append((start + rng.randrange(hot)) % n_gfns)
        else:
            out.append(rng.randrange(n_gfns))
    return out


def belady_faults(trace: Sequence[int], capacity: int) -> int:
    """Faults of Belady's optimal (evict the page used farthest in the future).

    Every first touch counts as a fault unless it fits in the initially empty memory.
    O(n log n) with a lazy max-heap keyed on next use.
    """
    never = len(trace)
    next_use = [never] * len(trace)
    last: dict[int, int] = {}
    for i in range(len(trace) - 1, -1, -1):
        next_use[i] = last.get(trace[i], never)
        last[trace[i]] = i
    resident: dict[int, int] = {}  # gfn -> its next use
    heap: list[tuple[int, int]] = []  # (-next use, gfn), lazily invalidated
    faults = 0
    for i, gfn in enumerate(trace):
        if gfn not in resident:
            faults += 1
            if len(resident) >= capacity:
                while True:
                    neg, victim = heapq.heappop(heap)
                    if resident.get(victim) == -neg:
                        del resident[victim]
                        break
        resident[gfn] = next_use[i]
        heapq.heappush(heap, (-next_use[i], gfn))
    return faults


def a0_faults(trace: Sequence[int], capacity: int, gfn_of_rank: Sequence[int]) -> int:
    """Faults of A0 (Aho, Denning and Ullman 1971): on a miss with the memory full, evict the
    resident gfn of lowest probability, the probabilities known in advance (`gfn_of_rank`,
    most probable first; gfns not in it are the least probable). For independent draws
    it is the optimal online policy: it settles on the `capacity - 1` most probable gfns
    plus one frame for whatever else comes. Memory starts empty, as `belady_faults`'s.
    """
    rank = {g: r for r, g in enumerate(gfn_of_rank)}
    unranked = len(gfn_of_rank)
    resident: set[int] = set()
    heap: list[tuple[int, int]] = []  # (-rank, gfn) of every resident gfn: max rank on top
    faults = 0
    for gfn in trace:
        if gfn in resident:
            continue
        faults += 1
        if len(resident) >= capacity:
            _, victim = heapq.heappop(heap)
            resident.remove(victim)
        resident.add(gfn)
        heapq.heappush(heap, (-rank.get(gfn, unranked), gfn))
    return faults


def lru_faults(trace: Sequence[int], capacity: int) -> int:
    """Faults of exact LRU (what clock approximates), memory starting empty."""
    cache: collections.OrderedDict[int, None] = collections.OrderedDict()
    faults = 0
    for gfn in trace:
        if gfn in cache:
            cache.move_to_end(gfn)
            continue
        faults += 1
        cache[gfn] = None
        if len(cache) > capacity:
            cache.popitem(last=False)
    return faults


def median(values: Sequence[float]) -> float:
    """The median of repeats."""
    return statistics.median(values)


def disk_of(path: str) -> str:
    """The file system and device that hold `path`, for the report."""
    st = os.statvfs(path)
    try:
        out = subprocess.run(
            ["df", "--output=source,fstype", path], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        out = "unknown"
    return f"{' '.join(out.split())} ({st.f_blocks * st.f_frsize / 2**30:.0f} GiB)"


if __name__ == "__main__":
    if sys.argv[1].startswith("--"):
        floor_server_main(sys.argv[1:])  # the relay floor's backend or relay
    else:
        echo_server_main(sys.argv[1])
