"""glibc's malloc in the long-running processes: a fixed mmap threshold, so that the heap
does not creep (issue 21).

glibc serves an allocation above `M_MMAP_THRESHOLD` (128 KiB at start) with its own
`mmap`, returned to the kernel by `free`. But its threshold is dynamic: each time such a
block is freed, the threshold rises to its size (up to 32 MiB), and from then on blocks of
that size come from the `brk` heap. The pager allocates and frees buffers of a page-out
batch's size (64 pages: 256 KiB, and their frames) all the time, so after the first of
them they are carved out of the heap between longer-lived small blocks, which the heap
cannot give back. Measured (`xpemu up --vcpus 8 --pattern uniform --nr-gfns 4096`, two
stacks side by side for 10 minutes at load 9-10): the pager's `[heap]` grew by 0.5 MB
(about 4 MB an hour, as the 30-minute soak's RSS did) with the dynamic threshold, and not
at all with the threshold pinned (`MALLOC_MMAP_THRESHOLD_`). Setting it with `mallopt`
pins it the same way (glibc stops adjusting a threshold the program set).

A user's own `MALLOC_MMAP_THRESHOLD_` wins; elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Final

#: mallopt's parameter number for the mmap threshold (glibc's malloc.h).
M_MMAP_THRESHOLD: Final = -3
#: glibc's initial threshold: blocks above it get their own mapping.
DEFAULT_THRESHOLD: Final = 128 * 1024
#: The environment variable glibc reads at start for the same setting.
ENV_VAR: Final = "MALLOC_MMAP_THRESHOLD_"


def pin_mmap_threshold(nbytes: int = DEFAULT_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `nbytes` (no dynamic rise); True if it was set here.
    False when the environment already sets it, or the C library has no `mallopt`."""
    if ENV_VAR in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, nbytes))


__all__ = ["DEFAULT_THRESHOLD", "ENV_VAR", "M_MMAP_THRESHOLD", "pin_mmap_threshold"]
