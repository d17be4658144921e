"""transport/malloc.py's `fill_heap_top`: the free top of the heap that the trim keeps (its
pad) is made resident at once, so a later burst within it neither extends the heap nor
faults pages in. Without it the heap's size and resident size rose a step at a time, each
time a burst reached further into the top than any before (hv's `[heap]` in the soak:
8.40 -> 8.80 MB in steps over 30 minutes while its highest live block stayed put)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading

import pytest

from transport import malloc
from transport.malloc import ENV_VARS

BURST = r"""
import sys
from transport.malloc import TRIM_PAD, fill_heap_top, heap_free, pin_malloc_thresholds
def heap():
    size = rss = 0
    inside = False
    for line in open("/proc/self/smaps"):
        if line[:1] in "0123456789abcdef" and "-" in line.split()[0]:
            inside = line.rstrip().endswith("[heap]")
        elif inside and line.startswith("Size:"):
            size = int(line.split()[1]) * 1024
        elif inside and line.startswith("Rss:"):
            rss = int(line.split()[1]) * 1024
    return size, rss
assert pin_malloc_thresholds()
filled = fill_heap_top() if sys.argv[1] == "fill" else False
top = heap_free()[0]
before = heap()
# A burst of 1.5 MiB (within the pad): six 256 KiB blocks from the top, touched, freed.
burst = [bytearray(256 * 1024) for _ in range(6)]
del burst
after = heap()
print(int(filled), top, after[0] - before[0], after[1] - before[1])
"""


def _burst(mode: str) -> tuple[int, int, int, int]:
    """(filled, free top before the burst, heap size grown by it, heap RSS grown by it), in
    a fresh interpreter (glibc's settings are per process) without the environment's
    malloc settings."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    out = subprocess.run(
        [sys.executable, "-c", BURST, mode], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    filled, top, size, rss = map(int, out.stdout.split())
    return filled, top, size, rss


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="no mallinfo2 (glibc)")
def test_a_burst_within_the_filled_pad_does_not_grow_the_heap() -> None:
    filled, top, size, rss = _burst("no fill")
    assert filled == 0 and top < malloc.TRIM_PAD  # a fresh interpreter's top: small
    assert size > 1024 * 1024 and rss > 1024 * 1024  # the burst extended the heap
    filled, top, size, rss = _burst("fill")
    assert filled == 1 and top >= malloc.TRIM_PAD
    assert size == 0  # served from the top: no extension
    assert rss <= 16 * 1024  # nothing faulted in (a few pages of bookkeeping at most)


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "malloc_trim"), reason="no malloc_trim")
def test_the_trimmer_fills_the_top_once_at_its_first_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the process has started (its first turn), not at every turn: after that the
    trim keeps the pad, and a fill during a burst would only grow the heap."""
    turns: list[str] = []
    stop = threading.Event()

    def trim() -> bool:
        turns.append("trim")
        if turns.count("trim") == 3:
            stop.set()  # the trimmer ends after this turn
        return True

    monkeypatch.setattr(malloc, "fill_heap_top", lambda: turns.append("fill") or True)
    monkeypatch.setattr(malloc, "maybe_trim_heap", trim)
    for fill, expected in ((True, ["fill", "trim", "trim", "trim"]), (False, ["trim"] * 3)):
        turns.clear()
        stop.clear()
        thread = malloc.start_heap_trimmer(every=0.001, stop=stop, fill=fill)
        assert thread is not None
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert turns == expected
