"""transport/malloc.py: with the threshold pinned, a large block freed does not send the
next ones into the heap (glibc's dynamic threshold would: the pager's heap crept by MBs
an hour, issue 21)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from transport.malloc import ENV_VAR, pin_mmap_threshold

PROBE = r"""
import ctypes, sys
from transport.malloc import pin_mmap_threshold
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks "
                "fsmblks uordblks fordblks keepcost").split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] == "pin":
    assert pin_mmap_threshold()
# Sizes far over any free space a fresh interpreter's heap has: glibc maps a block only
# when the heap cannot serve it (sysmalloc), so smaller ones would test the heap's state.
big = bytearray(16 << 20)  # its own mapping either way
del big                    # freed: glibc's dynamic threshold rises to its size
before = libc.mallinfo2().hblks
block = bytearray(8 << 20)  # under the risen threshold
print(libc.mallinfo2().hblks - before)  # 1 if it got its own mapping, 0 if from the heap
"""


def _mapped(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


@pytest.mark.skipif(
    not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="not glibc 2.33+ (no mallinfo2)"
)
def test_a_pinned_threshold_keeps_large_buffers_out_of_the_heap() -> None:
    assert _mapped("dynamic") == 0  # glibc's default: the freed block moved the threshold up
    assert _mapped("pin") == 1


def test_the_users_own_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "65536")
    assert pin_mmap_threshold() is False
