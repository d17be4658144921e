"""`python -m stack.bench.trace_cost`: what recording a trace costs (issue 20).

1. size: bytes an access of XPTRACE2 (hv/trace_format.py) on synthetic traces (Zipf
   s = 0.99 and uniformly random gfns; 4 vCPUs, 30 % writes, exponential gaps of 100 µs on
   average) and on recorded files given with `--recorded FILE` (either format: a
   XPTRACE1 file is re-encoded), next to XPTRACE1's 12;
2. stall: how long hv's event loop can go without running a task while hv records. One
   task plays hv, recording `--accesses` accesses in batches of 64 with a checkpoint
   after each; another only ticks (`trio.lowlevel.checkpoint()`) and keeps the longest
   gap between two of its ticks. Three ways, alternated `--repeats` times: no recorder (the floor),
   blocks sealed in a worker thread (hv's way), blocks sealed inline in `record`.

Benchmarks are not tests: nothing here asserts a time; every figure is printed next to
its floor, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import trio

from hv.trace import TraceRecorder
from hv.trace_format import encode_trace
from stack.benchlib import zipf_trace
from stack.policylab.traces import read_records

V1_BYTES = 12


def synthetic_records(kind: str, n: int, nr_gfns: int, seed: int = 1) -> np.ndarray:
    """`n` accesses: gfns Zipf (s = 0.99, ranks scattered) or uniform; 4 vCPUs, 30 %
    writes, all resident, gaps exponential with a mean of 100 µs."""
    rng = np.random.default_rng(seed)
    recs = np.zeros(n, [("t_us", "<u8"), ("gfn", "<u4"), ("vcpu", "<u2"), ("write", "u1"),
                        ("outcome", "u1")])  # fmt: skip
    if kind == "zipf":
        recs["gfn"] = zipf_trace(nr_gfns, n, 0.99, seed)
    else:
        recs["gfn"] = rng.integers(0, nr_gfns, n)
    recs["vcpu"] = rng.integers(0, 4, n)
    recs["write"] = rng.random(n) < 0.3
    recs["t_us"] = np.cumsum(rng.exponential(100, n).astype(np.uint64))
    return recs


def encoded_size(recs: np.ndarray, nr_gfns: int, vcpus: int) -> int:
    """Bytes of `recs` as an XPTRACE2 file."""
    rows = zip(
        recs["t_us"].tolist(),
        recs["gfn"].tolist(),
        recs["vcpu"].tolist(),
        recs["write"].astype(bool).tolist(),
        recs["outcome"].tolist(),
        strict=True,
    )
    return len(encode_trace(rows, nr_gfns=nr_gfns, vcpus=vcpus))


def size_rows(recorded: list[Path], n: int) -> list[tuple[str, int, int]]:
    """(trace, accesses, XPTRACE2 bytes) of each trace."""
    out = []
    for kind in ("zipf", "random"):
        out.append((kind, n, encoded_size(synthetic_records(kind, n, 8192), 8192, 4)))
    for path in recorded:
        recs = read_records(path)
        head = path.read_bytes()[:64]
        nr, vcpus = int.from_bytes(head[16:20], "little"), int.from_bytes(head[14:16], "little")
        if head.startswith(b"XPTRACE2"):
            size = path.stat().st_size  # as hv wrote it
        else:
            size = encoded_size(recs, nr, vcpus)
        out.append((path.name, len(recs), size))
    return out


async def _longest_gap(accesses: int, record: Callable[[int, int, bool, int], None]) -> float:
    """Seconds of the longest gap between two ticks of a task that only ticks, while
    another records `accesses` accesses through `record`."""
    longest = 0.0
    done = False

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done:
            await trio.lowlevel.checkpoint()
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    # Zipf gfns: blocks that compress as a real guest's do (a regular pattern would
    # compress in a tenth of the time and hide the stall).
    recs = synthetic_records("zipf", 65_536, 8192)
    gfns, vcpus = recs["gfn"].tolist(), recs["vcpu"].tolist()
    writes = recs["write"].astype(bool).tolist()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.lowlevel.checkpoint()
        for i in range(0, accesses, 64):
            for j in range(i & 0xFFFF, (i & 0xFFFF) + 64):
                record(gfns[j], vcpus[j], writes[j], 0)
            await trio.lowlevel.checkpoint()
        done = True
    return longest


async def _stall(mode: str, accesses: int, path: str) -> tuple[float, float]:
    """(longest gap, seconds for the accesses) recording the way `mode` says."""
    t0 = time.perf_counter()
    if mode == "floor":
        gap = await _longest_gap(accesses, lambda g, v, w, o: None)
        return gap, time.perf_counter() - t0
    rec = TraceRecorder(path, nr_gfns=8192, vcpus=4, domid=1)
    try:
        if mode == "inline":
            gap = await _longest_gap(accesses, rec.record)
        else:
            async with trio.open_nursery() as nursery:
                await nursery.start(rec.run)
                gap = await _longest_gap(accesses, rec.record)
                await rec.wait_sealed()  # the last full block is in the file
                nursery.cancel_scope.cancel()
        assert rec.blocks == accesses // rec.block_records, rec.blocks
        return gap, time.perf_counter() - t0
    finally:
        rec.close()


MODES = ("floor", "thread", "inline")


def stall_rows(accesses: int, repeats: int) -> dict[str, list[tuple[float, float]]]:
    """Per mode, (longest gap, seconds) of each repeat, the modes alternated."""
    out: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rec.bin")
        for _ in range(repeats):
            for mode in MODES:
                out[mode].append(trio.run(_stall, mode, accesses, path))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stack.bench.trace_cost", description=__doc__)
    p.add_argument("--recorded", type=Path, action="append", default=[], metavar="FILE")
    p.add_argument("--length", type=int, default=1_000_000, help="synthetic accesses")
    p.add_argument("--accesses", type=int, default=4 * 65_536, help="stall: accesses a run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-size", action="store_true")
    args = p.parse_args(argv)
    print(f"load average at start: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    if not args.skip_size:
        print("size: XPTRACE2 bytes an access (XPTRACE1: 12)")
        for name, n, size in size_rows(args.recorded, args.length):
            print(f"  {name:<24} {n:>9,} accesses {size:>11,} bytes  {size / n:.2f} B/access")
    rows = stall_rows(args.accesses, args.repeats)
    print(
        f"stall: longest gap between two ticks of the event loop while {args.accesses:,}"
        f" accesses are recorded ({args.accesses // 65_536} full blocks), {args.repeats} runs"
    )
    for mode in MODES:
        gaps = [g * 1e3 for g, _ in rows[mode]]
        secs = [s for _, s in rows[mode]]
        print(
            f"  {mode:<7} longest gap ms: median {statistics.median(gaps):6.2f}  max"
            f" {max(gaps):6.2f}  (each: {', '.join(f'{g:.1f}' for g in gaps)});"
            f" µs an access {statistics.median(secs) / args.accesses * 1e6:.2f}"
        )
    print(f"load average at end: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
