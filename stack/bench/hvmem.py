"""Startup time and memory per gfn of a large domain: `python -m stack.bench.hvmem`.

Creates an hv whose domain 1 has `--nr-gfns` gfns (default 1,048,576: 4 GiB of guest
memory, all zero) and prints the time it took and what it costs beyond the frames the
guest touched, two ways: Python allocations traced by tracemalloc (the p2m arrays; the
frame pool's mmap is not a Python allocation) and the process's resident set growth
(which includes any page of the pool that was touched). Then it touches `--touch` gfns and
shows that each costs about one 4 KiB frame of RSS.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
import tracemalloc

from hv import HvConfig, Hypervisor
from protocol import PAGE_SIZE
from transport import configure_logging


def _rss() -> int:
    """Resident set size of this process, in bytes (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str] | None = None) -> None:
    """Run the measurement and print the figures."""
    p = argparse.ArgumentParser(prog="python -m stack.bench.hvmem", description=__doc__)
    p.add_argument("--nr-gfns", type=int, default=1 << 20)
    p.add_argument("--touch", type=int, default=4096, help="gfns to write after startup")
    p.add_argument(
        "--churn", type=int, default=1 << 18, help="gfns to page out and back in at the end"
    )
    args = p.parse_args(argv)
    n = args.nr_gfns
    configure_logging("hv", level="warning")

    # Startup time without tracemalloc (which slows allocation down).
    t0 = time.perf_counter()
    Hypervisor(HvConfig(nr_gfns=n, vcpus=4)).close()
    startup = time.perf_counter() - t0

    gc.collect()
    rss0 = _rss()
    tracemalloc.start()
    t0 = time.perf_counter()
    hv = Hypervisor(HvConfig(nr_gfns=n, vcpus=4))
    t1 = time.perf_counter()
    traced, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    gc.collect()
    rss1 = _rss()

    domain = hv.domains[1]
    pool = hv.pool
    t2 = time.perf_counter()
    for g in range(min(args.touch, n)):
        pool.write(domain.p2m.frames[g], 0, b"\x01" * PAGE_SIZE)
    t3 = time.perf_counter()
    rss2 = _rss()

    t4 = time.perf_counter()
    violations = hv.check()
    t5 = time.perf_counter()
    t6 = time.perf_counter()
    domain.audit(0, min(n, 524288))
    t7 = time.perf_counter()

    print(f"domain of {n} gfns ({n * PAGE_SIZE / 2**30:.2f} GiB), host {pool.nr_frames} frames")
    print(f"startup (Hypervisor(HvConfig(...))): {startup:.3f} s ({t1 - t0:.3f} s traced)")
    print(f"tracemalloc: {traced / n:.2f} bytes/gfn now, {peak / n:.2f} bytes/gfn peak")
    print(f"RSS growth at startup: {(rss1 - rss0) / n:.2f} bytes/gfn ({(rss1 - rss0) >> 20} MiB)")
    touched = min(args.touch, n)
    print(
        f"after writing {touched} gfns: RSS +{(rss2 - rss1) / max(touched, 1):.0f} bytes per "
        f"touched gfn ({t3 - t2:.3f} s)"
    )
    print(f"check(): {t5 - t4:.3f} s, {len(violations)} violations")
    print(f"audit of {min(n, 524288)} gfns: {t7 - t6:.3f} s")

    # Paging churn: the free list grows by 4 bytes per freed frame; nothing else does.
    churn = min(args.churn, n)
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    t8 = time.perf_counter()
    batch = 65536
    for start in range(0, churn, batch):
        gfns = list(range(start, min(start + batch, churn)))
        domain.nominate(gfns)
        domain.evict(gfns)
    t9 = time.perf_counter()
    paged_out, _ = tracemalloc.get_traced_memory()
    page = bytes(PAGE_SIZE)
    for start in range(0, churn, 255):
        gfns = list(range(start, min(start + 255, churn)))
        domain.prep(gfns, [page] * len(gfns))
    t10 = time.perf_counter()
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"paged out {churn} gfns in {t9 - t8:.2f} s ({churn / (t9 - t8):.0f} gfns/s), "
        f"in again in {t10 - t9:.2f} s ({churn / (t10 - t9):.0f} gfns/s)"
    )
    print(
        f"memory growth from churn: {(paged_out - base) / n:.2f} bytes/gfn while out, "
        f"{(after - base) / n:.2f} bytes/gfn after, peak {(peak - base) / n:.2f} bytes/gfn "
        f"(all of it: the free-frame stack, at most 4 bytes per host frame)"
    )
    print(f"check() after churn: {hv.check() or 'no violations'}")
    hv.close()


if __name__ == "__main__":
    main()
