"""transport/malloc.py: with the thresholds pinned, a large block freed does not send the
next ones into the heap (glibc's dynamic mmap threshold would: the pager's heap crept by
MBs an hour, issue 21), and a batch buffer freed at the heap's top is not trimmed away
and faulted in again for the next batch (what made a pinned mmap threshold alone cost
page-out 25-40%)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from transport.malloc import ENV_VARS, pin_malloc_thresholds

PROBE = r"""
import ctypes, sys
from transport.malloc import pin_malloc_thresholds
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    ).split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] == "pin":
    assert pin_malloc_thresholds()
big = bytearray(2_000_000)  # above 512 KiB: its own mapping either way
del big                     # freed: glibc's dynamic threshold rises to its size
before = libc.mallinfo2().hblks
large = bytearray(1_000_000)  # a multi-batch frame's buffer
mapped = libc.mallinfo2().hblks - before  # 1 if it got its own mapping, 0 if from the heap
del large
batch = bytearray(300_000)  # a batch-sized buffer, from the heap
arena = libc.mallinfo2().arena
del batch  # freed at the top of the heap
kept = libc.mallinfo2().arena == arena  # True if the heap kept its top
print(mapped, int(kept))
"""


def _run(script: str, mode: str) -> subprocess.CompletedProcess[str]:
    """`script` in a fresh interpreter (glibc's settings are per process), without the
    environment's malloc settings; it must succeed."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    out = subprocess.run(
        [sys.executable, "-c", script, mode], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out


def _two_ints(script: str, mode: str) -> tuple[int, int]:
    """The two integers `script` prints."""
    a, b = _run(script, mode).stdout.split()
    return int(a), int(b)


def _no_glibc(name: str) -> pytest.MarkDecorator:
    """Skip where the C library has no `name` (not glibc, or an older one)."""
    return pytest.mark.skipif(not hasattr(ctypes.CDLL(None), name), reason=f"no {name} (glibc)")


@_no_glibc("mallinfo2")
def test_pinned_thresholds_map_large_blocks_and_keep_the_heaps_top() -> None:
    mapped, _ = _two_ints(PROBE, "dynamic")
    assert mapped == 0  # glibc's default: the freed block moved the threshold up
    assert _two_ints(PROBE, "pin") == (1, 1)


@pytest.mark.parametrize("var", ENV_VARS)
def test_the_users_own_setting_wins(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    for v in ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(var, "65536")
    assert pin_malloc_thresholds() is False


ARENAS = r"""
import ctypes, sys, threading
from transport.malloc import pin_malloc_thresholds
if sys.argv[1] == "pin":
    assert pin_malloc_thresholds()
libc = ctypes.CDLL(None)
held, go = [], threading.Barrier(5)
def worker():
    held.append(bytearray(100_000))  # malloc'd in this thread: its arena, if it has one
    go.wait()
threads = [threading.Thread(target=worker) for _ in range(4)]
for t in threads:
    t.start()
go.wait()  # all four alive at once: each would get an arena of its own
for t in threads:
    t.join()
libc.malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


@_no_glibc("malloc_stats")
def test_one_arena_however_many_threads_allocate() -> None:
    """Worker threads that allocate at the same time would each get an arena (the soak's
    steps); pinned, they share the main one."""

    def arenas(mode: str) -> int:
        return sum(line.startswith("Arena ") for line in _run(ARENAS, mode).stderr.splitlines())

    assert arenas("dynamic") >= 3  # glibc's default: new arenas for the threads
    assert arenas("pin") == 1


TRIM = r"""
import sys
from transport.malloc import pin_malloc_thresholds, trim_heap
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
assert pin_malloc_thresholds()  # the top of the heap is kept (32 MiB): only a trim helps
blocks = [bytearray(8192) for _ in range(4000)]  # 32 MB of heap, touched
keep = blocks[-1::-50]  # a few live blocks spread over it: nothing at the top is free
del blocks
before = rss()
released = trim_heap() if sys.argv[1] == "trim" else False
print(int(released), before - rss())
"""


@_no_glibc("malloc_trim")
def test_a_trim_gives_back_the_free_pages_between_live_blocks() -> None:
    """The soak's hv: a heap whose free memory lies between live blocks keeps it resident
    (its high-water mark); a trim gives it back."""
    assert _two_ints(TRIM, "no trim")[1] < 1_000_000  # freed, yet still resident
    released, dropped = _two_ints(TRIM, "trim")
    assert released == 1
    assert dropped > 20_000_000  # most of the 32 MB


@_no_glibc("malloc_trim")
def test_the_trimmer_thread_trims_again_and_again(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from transport import malloc

    trims = threading.Semaphore(0)
    monkeypatch.setattr(malloc, "maybe_trim_heap", lambda: trims.release() or True)
    stop = threading.Event()
    thread = malloc.start_heap_trimmer(every=0.001, stop=stop)
    assert thread is not None and thread.daemon
    try:
        for _ in range(3):
            assert trims.acquire(timeout=30)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


PAD = r"""
import sys
from transport.malloc import heap_free, maybe_trim_heap, pin_malloc_thresholds, trim_heap
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
assert pin_malloc_thresholds()
anchor = bytearray(100)  # nothing below the burst is freed with it
burst = [bytearray(256 * 1024) for _ in range(24)]  # 6 MiB of heap at the top, touched
del burst  # merged back into the top, kept (trim threshold 32 MiB)
top = heap_free()[0]
before = rss()
pad = int(sys.argv[1])
released = trim_heap(pad)
print(top, heap_free()[0], int(released), before - rss(), int(maybe_trim_heap(pad)))
"""


@_no_glibc("mallinfo2")
@_no_glibc("malloc_trim")
def test_a_trim_keeps_the_pad_of_the_heaps_free_top_resident() -> None:
    """hv's bursts are carved from the heap's top and merge back into it: a trim keeps 2 MiB
    of it (no sawtooth of page faults after each trim), and gives back the rest."""
    from transport.malloc import TRIM_PAD

    mib = 1024 * 1024
    top, kept, released, dropped, again = map(int, _run(PAD, str(TRIM_PAD)).stdout.split())
    assert top >= 6 * mib
    assert TRIM_PAD <= kept <= TRIM_PAD + 64 * 1024
    assert released == 1
    assert top - TRIM_PAD - mib < dropped < top - TRIM_PAD + mib  # the rest, not the pad
    assert again == 0  # nothing left worth a trim: skipped
    top, kept, released, dropped, again = map(int, _run(PAD, "0").stdout.split())
    assert kept < 64 * 1024 and dropped > top - mib  # a pad of 0: the whole top goes


SLACK = r"""
from transport.malloc import TRIM_PAD, TRIM_SLACK, heap_free, maybe_trim_heap
from transport.malloc import pin_malloc_thresholds, trim_heap
assert pin_malloc_thresholds()
trim_heap()
blocks = [bytearray(8192) for _ in range(1000)]  # 8 MB of heap, touched
keep = blocks[::4]  # every fourth block live: 6 MB free between them
del blocks
between = heap_free()[1]
print(int(between > TRIM_SLACK), int(maybe_trim_heap()), int(heap_free()[0] <= TRIM_PAD + 65536))
"""


@_no_glibc("mallinfo2")
@_no_glibc("malloc_trim")
def test_a_trim_runs_when_the_free_memory_between_live_blocks_outgrows_the_slack() -> None:
    out = _run(SLACK, "-").stdout.split()
    assert out == ["1", "1", "1"]
