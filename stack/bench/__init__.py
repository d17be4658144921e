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
6. policy quality: faults per 1,000 accesses of the pager's own policy objects (and
   `--policy` plug-ins) on a Zipf, a shifting hot-set and a looping-scan trace, next to
   Belady's optimal on the same trace and memory, exact LRU, ARC, and on Zipf the best
   online policy (A0, knowing each gfn's probability);
7. lazyfs: page-out throughput at batch 64 of a pager with its state directory under the
   lazy FUSE file system of power faults (stack/lazyfs.py), next to the same pager on the
   plain disk (skipped, with the reason, where FUSE is not usable);
8. sim: seeds per minute of `xpemu sim` (wall and CPU time) and the fault load of a
   40-second stress run replayed in it;
9. campaign (not in the quick default): seeds per minute of `xpemu campaign` on 1 and 2
   local Dask workers and their ratio, next to the same seeds in one process.

Benchmarks are not tests: nothing here asserts a time. `run_bench` returns every figure
(also written by `--json`); `render_table` formats them.

One module per section (floor, populate, throughput, recovery, memory, policy, lazyfs,
sim, campaign), with options, procs (the processes a section runs against), run, table and cli. Two
standalone tools live here too, so that hv and pager import nothing of each other:
`python -m stack.bench.inproc` (a pager and hv in one process) and `python -m
stack.bench.hvmem`.
"""

from .cli import add_arguments, main
from .memory import probe_hv_memory, probe_pager_index
from .options import FULL, QUICK, SECTIONS, BenchError, BenchOptions, Sizes
from .policy import TraceMemory
from .procs import children_of
from .recovery import recovered_seconds
from .run import run_bench
from .table import profile_summary, render_table, table_rows

__all__ = [
    "FULL",
    "QUICK",
    "SECTIONS",
    "BenchError",
    "BenchOptions",
    "Sizes",
    "TraceMemory",
    "add_arguments",
    "children_of",
    "main",
    "probe_hv_memory",
    "probe_pager_index",
    "profile_summary",
    "recovered_seconds",
    "render_table",
    "run_bench",
    "table_rows",
]
