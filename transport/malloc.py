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

The trim keeps the heap's free top up to `TRIM_PAD` (2 MiB), and is skipped when it
would give back little (`maybe_trim_heap`). A trim of everything (`malloc_trim(0)`) made
hv's RSS a sawtooth: hv's bursts (a pipeline of map replies, a few 256 KiB blocks at once)
are carved from the top of the heap and merge back into it when freed, so every trim cut
the top back (mallinfo2 before and after, every 10 s at full load: top 1.3-2.6 MB -> 1 kB,
the heap's RSS 7.8-9.0 -> 6.2 MB) and the next burst faulted it in again: hv's `[heap]`
swung by 0.5-1.3 MB within each 10 s, its only mapping that moved, which a soak's samples
caught at either extreme (1-2 MB/h over 30 minutes from a heap that did not grow). Kept
at 2 MiB the top stays resident (the heap at 8,672 kB before each of 12 trims in a row)
and a burst costs no page fault; `malloc_trim` still frees pages between live blocks,
where the 10 s of churn after a trim faulted in again the ~0.5 MB it released each time,
so a trim runs only when the free top has outgrown the pad or the free memory between
live blocks exceeds `TRIM_SLACK` (1 MiB; ~0.6 MB at full load): the heap's resident size
is its extent, at most its highest live block + 2 MiB.

And the top filled to the pad once, at the trimmer's first turn (`fill_heap_top`, 10 s
after start). A trim only cuts a top above the pad, so a top below it stayed as it was,
and the heap grew (`sbrk`, pages faulted in and kept) each time a burst needed more top
than any burst before: hv's `[heap]` went 8.40 -> 8.80 MB in steps over a 30-minute soak.
Its highest live block did not move: hv sampled every 1-2 s (`mallinfo2`: the arena less
its free top) kept it at 7,781,760 bytes from second 2 to 167 while the arena went 8.39 ->
8.70 -> 9.46 MB (the free top 0.6 -> 0.9 -> 1.7 MB, never trimmed, being under the pad),
and in another run at 6,485 kB with the top at 1.67 MB from second 10 to 199. So the heap
crept towards its highest live block + the pad, at the pace of the rare bursts that set a
new record, which a soak counts as growth. Filled at once (eight 256 KiB blocks from the
top, written, freed: ~1 ms, once), the top is the pad from the first minute on and a burst
within it extends nothing (the same load beside it, filled: top 2,049 kB, `[heap]` 8,568
kB of Size and of RSS from second 20 to 87). Filled before hv's start-up instead, one
run's heap had a 4 MB hole under a block start-up kept (cause not looked into), hence the
first turn.

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
#: Free top of the heap a trim keeps (`malloc_trim`'s pad): above hv's bursts at full load
#: (1.3-2.6 MB of top between trims), so they do not fault pages in after each trim.
TRIM_PAD: Final = 2 * 1024 * 1024
#: Free bytes between live blocks (the top aside) below which a trim is not worth its page
#: faults: they are reused within seconds (see the module docstring).
TRIM_SLACK: Final = 1024 * 1024
#: Top above the pad that is not worth a trim either (glibc keeps a few pages over it).
_TOP_SLACK: Final = 64 * 1024
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


class _MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (2.33 and later)."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        ).split()
    ]


@functools.cache
def _mallinfo2() -> Any | None:
    """glibc's `mallinfo2`, looked up once; None without it."""
    try:
        func = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    func.argtypes = []
    func.restype = _MallInfo2
    return func


def heap_free() -> tuple[int, int] | None:
    """(free bytes at the top of the main heap, free bytes between its live blocks), from
    `mallinfo2`; None without it."""
    info = _mallinfo2()
    if info is None:
        return None
    got = info()
    return got.keepcost, got.fordblks - got.keepcost


def trim_heap(pad: int = TRIM_PAD) -> bool:
    """Give the free pages of the heap back to the kernel but `pad` bytes of its free top
    (`malloc_trim(pad)`); True if some memory was released. False, doing nothing, without
    glibc."""
    trim = _libc_function("malloc_trim", ctypes.c_size_t)
    return trim is not None and bool(trim(pad))


def maybe_trim_heap(pad: int = TRIM_PAD, slack: int = TRIM_SLACK) -> bool:
    """`trim_heap(pad)` if it would give back enough: the free top more than `pad` (and a
    few pages), or more than `slack` bytes free between live blocks; always without
    `mallinfo2` to tell. True if some memory was released."""
    free = heap_free()
    if free is not None:
        top, between = free
        if top <= pad + _TOP_SLACK and between <= slack:
            return False
    return trim_heap(pad)


def start_heap_trimmer(
    every: float = TRIM_EVERY_S, stop: threading.Event | None = None, *, fill: bool = True
) -> threading.Thread | None:
    """Trim the heap where worth it (`maybe_trim_heap`) every `every` seconds in a daemon
    thread, until `stop` is set (never, if None: the life of the process; see the module
    docstring), the first time after filling the heap's top to the trim's pad
    (`fill_heap_top`) if `fill`; None (no thread) without glibc's `malloc_trim`."""
    if _libc_function("malloc_trim", ctypes.c_size_t) is None:
        return None
    stopped = stop if stop is not None else threading.Event()

    def run() -> None:
        first = fill
        while not stopped.wait(every):
            if first:
                first = False
                fill_heap_top()
            maybe_trim_heap()

    thread = threading.Thread(target=run, name="heap-trimmer", daemon=True)
    thread.start()
    return thread


#: Bytes of each block `fill_heap_top` takes from the heap: under MMAP_THRESHOLD, so they
#: come from the heap's top, not from a mapping of their own.
_FILL_BLOCK: Final = 256 * 1024


@functools.cache
def _malloc_free() -> tuple[Any, Any] | None:
    """glibc's `malloc` and `free` (pointer-typed), looked up once; None without them."""
    try:
        libc = ctypes.CDLL(None)
        malloc, free = libc.malloc, libc.free
    except (OSError, AttributeError):
        return None
    malloc.argtypes, malloc.restype = [ctypes.c_size_t], ctypes.c_void_p
    free.argtypes, free.restype = [ctypes.c_void_p], None
    return malloc, free


def fill_heap_top(pad: int = TRIM_PAD) -> bool:
    """Make the heap's free top at least `pad` bytes, every page of it resident: take
    blocks of `_FILL_BLOCK` bytes from the heap to cover `pad`, write each (the kernel
    commits a page on its first write), and free them, which merges them back into the
    top. True if it did; False, doing nothing, when the top is that large already or
    without glibc's `malloc` and `mallinfo2`. See the module docstring: the top the trim
    keeps is then resident at once instead of a page at a time as bursts first reach it."""
    funcs, free_now = _malloc_free(), heap_free()
    if funcs is None or free_now is None or free_now[0] >= pad:
        return False
    malloc, free = funcs
    blocks = []
    try:
        for _ in range(-(-pad // _FILL_BLOCK)):
            block = malloc(_FILL_BLOCK)
            if not block:
                break
            blocks.append(block)
            ctypes.memset(block, 0, _FILL_BLOCK)
    finally:
        for block in reversed(blocks):
            free(block)
    return True


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
    "TRIM_PAD",
    "TRIM_SLACK",
    "TRIM_THRESHOLD",
    "fill_heap_top",
    "heap_free",
    "maybe_trim_heap",
    "pin_malloc_thresholds",
    "start_heap_trimmer",
    "trim_heap",
    "tune_malloc",
]
