"""glibc's malloc in the long-running processes: fixed mmap and trim thresholds, so that
the heap does not creep over days and batch buffers cost no system call (issue 21).

glibc serves an allocation above `M_MMAP_THRESHOLD` (128 KiB at start) with its own
`mmap`, returned to the kernel by `free`. But that threshold is dynamic: each time such a
block is freed, it rises to the block's size (up to 32 MiB), and from then on blocks of
that size come from the `brk` heap, carved out between longer-lived small blocks that the
heap cannot give back: the pager's heap crept by ~4 MB an hour that way (BENCHMARKS.md,
Soak). Pinning the threshold stops the rise, but pinning it at 128 KiB maps and unmaps
every batch-sized buffer (a 64-page batch is 256 KiB) and cost page-out 40%; pinning it
at 512 KiB alone cost 25%, because a pinned threshold leaves the trim threshold at 128
KiB, so each batch buffer freed at the top of the heap gave its pages back and the next
one faulted them in again.

So both are fixed here: blocks above 512 KiB (rare: a multi-batch frame) get their own
mapping and never move the threshold; the heap keeps up to 32 MiB of free top instead of
trimming it after every batch.

And one arena: glibc gives each new thread that allocates its own arena (up to 8 per
core), and trio's worker threads come and go (idle ones exit after 10 s), so the number
of arenas rose whenever the pager's disk threads reached a new peak of concurrency, each
new arena keeping its own free blocks and top: the soak's steps of 0.1-0.7 MB, minutes or
an hour apart (BENCHMARKS.md, Soak). Every allocation of these processes but a blocking
call's result happens under the GIL anyway, so one arena costs no contention.

And a trim every 10 s (`start_heap_trimmer`): glibc gives back only the free top of the
heap, never free pages between live blocks, so a heap's resident size is its high-water
mark, which rare bursts (a slow peer's queued frames, a batch of big replies) raise a
little at a time: hv's heap grew 0.5 MB in 22 minutes of a soak while tracemalloc saw its
live Python memory flat (17.46 -> 17.45 MB between minutes 1.5 and 8). `malloc_trim(0)`
returns every free page of the heap, so the resident size follows the live memory. A
trim takes 2-6 ms over a 16 MB heap (measured: 6 ms releasing, 2 ms with nothing to
release), in a daemon thread of its own (the call releases the GIL; the heap's lock is
held meanwhile), every 10 s: 0.06% of the time at most. Every minute left the resident
size swinging by ~0.5 MB between trims, which two samples a soak compares can catch at
either extreme. A page given back costs one page fault when it is used again.

A user's own `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or `MALLOC_ARENA_MAX`
wins (then this sets nothing); elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from typing import Any, Final

#: mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
M_ARENA_MAX: Final = -8
#: Blocks above this get their own mapping: above a 64-page batch's buffers (256 KiB) and
#: a 64 KiB read, so those stay in the heap and cost no mmap/munmap each.
MMAP_THRESHOLD: Final = 512 * 1024
#: Free space the heap keeps at its top before giving it back (glibc's default is 128 KiB
#: once a threshold is set, which would trim and re-fault after every batch).
TRIM_THRESHOLD: Final = 32 * 1024 * 1024
#: Arenas: the main one only (see the module docstring).
ARENA_MAX: Final = 1
#: Seconds between two trims of the heap (`start_heap_trimmer`).
TRIM_EVERY_S: Final = 10.0
#: The environment variables glibc reads at start for the same settings.
ENV_VARS: Final = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")


@functools.cache
def _libc_function(name: str, *argtypes: type) -> Any | None:
    """The C library's function `name` (an int result), looked up once; None if the C
    library has none. The process's own symbols hold the C library's: no search for
    it (`find_library` runs `ldconfig`, 1-2 ms, once per call: every trim did it)."""
    try:
        func = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    func.argtypes = argtypes
    func.restype = ctypes.c_int
    return func


def pin_malloc_thresholds(
    mmap_threshold: int = MMAP_THRESHOLD,
    trim_threshold: int = TRIM_THRESHOLD,
    arena_max: int = ARENA_MAX,
) -> bool:
    """Fix glibc's mmap and trim thresholds (no dynamic rise) and its number of arenas;
    True if they were set here. False when the environment already sets any of them, or
    the C library has no `mallopt`. Call it before any thread but the main one starts."""
    if any(v in os.environ for v in ENV_VARS):
        return False
    mallopt = _libc_function("mallopt", ctypes.c_int, ctypes.c_int)
    if mallopt is None:
        return False
    return all(
        mallopt(param, value)
        for param, value in (
            (M_MMAP_THRESHOLD, mmap_threshold),
            (M_TRIM_THRESHOLD, trim_threshold),
            (M_ARENA_MAX, arena_max),
        )
    )


def trim_heap() -> bool:
    """Give every free page of the heap back to the kernel (`malloc_trim(0)`); True if
    some memory was released. False, doing nothing, without glibc."""
    trim = _libc_function("malloc_trim", ctypes.c_size_t)
    return trim is not None and bool(trim(0))


def start_heap_trimmer(
    every: float = TRIM_EVERY_S, stop: threading.Event | None = None
) -> threading.Thread | None:
    """Trim the heap every `every` seconds in a daemon thread, until `stop` is set (never,
    if None: the life of the process; see the module docstring); None (no thread) without
    glibc's `malloc_trim`."""
    if _libc_function("malloc_trim", ctypes.c_size_t) is None:
        return None
    stopped = stop if stop is not None else threading.Event()

    def run() -> None:
        while not stopped.wait(every):
            trim_heap()

    thread = threading.Thread(target=run, name="heap-trimmer", daemon=True)
    thread.start()
    return thread


def tune_malloc() -> None:
    """What the long-running processes call first: the pinned thresholds and arenas, and
    the trimmer (see the module docstring)."""
    pin_malloc_thresholds()
    start_heap_trimmer()


__all__ = [
    "ARENA_MAX",
    "ENV_VARS",
    "MMAP_THRESHOLD",
    "M_ARENA_MAX",
    "M_MMAP_THRESHOLD",
    "M_TRIM_THRESHOLD",
    "TRIM_EVERY_S",
    "TRIM_THRESHOLD",
    "pin_malloc_thresholds",
    "start_heap_trimmer",
    "trim_heap",
    "tune_malloc",
]
