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
trimming it after every batch. A user's own `MALLOC_MMAP_THRESHOLD_` or
`MALLOC_TRIM_THRESHOLD_` wins (then this sets nothing); elsewhere than glibc this does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Final

#: mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
#: Blocks above this get their own mapping: above a 64-page batch's buffers (256 KiB) and
#: a 64 KiB read, so those stay in the heap and cost no mmap/munmap each.
MMAP_THRESHOLD: Final = 512 * 1024
#: Free space the heap keeps at its top before giving it back (glibc's default is 128 KiB
#: once a threshold is set, which would trim and re-fault after every batch).
TRIM_THRESHOLD: Final = 32 * 1024 * 1024
#: The environment variables glibc reads at start for the same settings.
ENV_VARS: Final = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def pin_malloc_thresholds(
    mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
) -> bool:
    """Fix glibc's mmap and trim thresholds (no dynamic rise); True if they were set here.
    False when the environment already sets either, or the C library has no `mallopt`."""
    if any(v in os.environ for v in ENV_VARS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(M_TRIM_THRESHOLD, trim_threshold)
    )


__all__ = [
    "ENV_VARS",
    "MMAP_THRESHOLD",
    "M_MMAP_THRESHOLD",
    "M_TRIM_THRESHOLD",
    "TRIM_THRESHOLD",
    "pin_malloc_thresholds",
]
