"""The host frame pool: every guest frame lives in one anonymous mmap (Xen's heap).

The OS commits only the pages that are touched, so a fresh pool of a million frames costs
address space, not memory. Allocation hands out never-used frames from a moving mark
first, then frames freed earlier from a compact `array('I')` stack, so the free list of a
fresh pool is empty and costs nothing. Every free frame reads as zeros: a freed frame is
given back to the OS with MADV_DONTNEED (which also zeroes it) or zeroed by hand, so an
allocated frame never leaks a previous owner's bytes.
"""

from __future__ import annotations

import mmap
import sys
from array import array
from collections.abc import Sequence
from typing import Final

from protocol import PAGE_SIZE

#: Marks "no frame" in a p2m frame array (frame numbers are unsigned 32-bit).
NO_FRAME: Final = 0xFFFFFFFF

_ZERO_PAGE: Final = bytes(PAGE_SIZE)

# MAP_NORESERVE: a pool of a million frames must not be refused by the kernel's overcommit
# heuristic for memory that will mostly never be touched. Python does not export the flag.
_MAP_NORESERVE: Final = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform == "linux" else 0)

# MADV_DONTNEED frees and zeroes whole OS pages only; with bigger OS pages we zero by hand.
_CAN_DISCARD: Final = hasattr(mmap, "MADV_DONTNEED") and mmap.PAGESIZE == PAGE_SIZE


class FramePool:
    """`nr_frames` host frames of PAGE_SIZE bytes with a free list."""

    def __init__(self, nr_frames: int) -> None:
        if not 1 <= nr_frames < NO_FRAME:
            raise ValueError(f"nr_frames must be in [1, {NO_FRAME - 1}]")
        self.nr_frames = nr_frames
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
        self._mem = mmap.mmap(-1, nr_frames * PAGE_SIZE, flags=flags)
        self._mark = 0  # frames at or above the mark were never handed out
        self._freed = array("I")  # frames handed out and given back, all zeroed

    @property
    def free(self) -> int:
        """Frames available for allocation."""
        return self.nr_frames - self._mark + len(self._freed)

    @property
    def used(self) -> int:
        """Frames handed out and not yet freed."""
        return self.nr_frames - self.free

    def alloc(self) -> int | None:
        """One zero-filled frame, or None when the host is out of memory."""
        if self._freed:
            return self._freed.pop()
        if self._mark < self.nr_frames:
            self._mark += 1
            return self._mark - 1
        return None

    def alloc_many(self, n: int) -> array | None:
        """n zero-filled frames as an array('I'), or None (and nothing taken) if short."""
        if n > self.free:
            return None
        take = min(n, self.nr_frames - self._mark)
        out = array("I", range(self._mark, self._mark + take))
        self._mark += take
        rest = n - take
        if rest:
            out.extend(self._freed[len(self._freed) - rest :])
            del self._freed[len(self._freed) - rest :]
        return out

    def release(self, frame: int) -> None:
        """Give a frame back: its bytes are discarded so its next owner reads zeros."""
        start = frame * PAGE_SIZE
        if _CAN_DISCARD:
            self._mem.madvise(mmap.MADV_DONTNEED, start, PAGE_SIZE)
        else:
            self._mem[start : start + PAGE_SIZE] = _ZERO_PAGE
        self._freed.append(frame)

    def release_many(self, frames: array) -> None:
        """Give back many frames at once (domain destruction): one madvise per run."""
        real = sorted(frames)
        while real and real[-1] == NO_FRAME:  # sorted last: the largest number
            real.pop()
        if real and real[-1] - real[0] == len(real) - 1:  # one run (the frames are distinct)
            self._discard(real[0], len(real))
            self._freed.extend(array("I", real))
            return
        i = 0
        while i < len(real):
            j = i
            while j + 1 < len(real) and real[j + 1] == real[j] + 1:
                j += 1
            self._discard(real[i], j - i + 1)
            i = j + 1
        self._freed.extend(array("I", real))

    def _discard(self, frame: int, count: int) -> None:
        """Zero `count` frames from `frame` on (given back to the OS where it can)."""
        start, length = frame * PAGE_SIZE, count * PAGE_SIZE
        if _CAN_DISCARD:
            self._mem.madvise(mmap.MADV_DONTNEED, start, length)
        else:
            self._mem[start : start + length] = bytes(length)

    def read(self, frame: int, off: int = 0, length: int = PAGE_SIZE) -> bytes:
        """Bytes [off, off+length) of a frame."""
        start = frame * PAGE_SIZE + off
        return self._mem[start : start + length]

    def read_many(
        self, frames: Sequence[int], *, copy: bool = True
    ) -> list[bytes] | list[memoryview]:
        """Whole pages of many frames, in order: copies, or (`copy` False) views of the
        frames themselves, which see every later change of the frame: for a caller that
        copies them at once (a reply encoded into its frame) and keeps none."""
        if copy:
            mem = self._mem
            return [mem[f * PAGE_SIZE : (f + 1) * PAGE_SIZE] for f in frames]
        view = memoryview(self._mem)
        return [view[f * PAGE_SIZE : (f + 1) * PAGE_SIZE] for f in frames]

    def write(self, frame: int, off: int, data: bytes) -> None:
        """Store data at off within a frame (the caller has checked the bounds)."""
        start = frame * PAGE_SIZE + off
        self._mem[start : start + len(data)] = data

    def free_frames(self) -> tuple[int, array]:
        """(mark, freed stack): what `check` needs to account for every free frame."""
        return self._mark, self._freed

    def close(self) -> None:
        """Unmap the pool."""
        self._mem.close()
