"""The simulated disk's files: inodes (what reads see, what is durable) and open handles.

A handle (`SimFile`, `SimLock`) belongs to the process epoch that opened it and is dead
(`EBADF`) once that process crashed; the bytes and faults behind it are `SimDisk`'s.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from pager.disk import SECTOR

if TYPE_CHECKING:
    from .disk import SimDisk


def _oserror(code: int, what: str) -> OSError:
    return OSError(code, f"{os.strerror(code)} (simulated: {what})")


class _File:
    """A file's inode: what reads see, what is durable, the changes in between."""

    __slots__ = ("bad", "data", "durable", "pending")

    def __init__(self) -> None:
        self.data = bytearray()  # current contents: what reads see
        self.durable = bytearray()  # what survives a power loss for sure
        self.pending: list[tuple[int, bytes] | int] = []  # (offset, data) writes, int truncates
        self.bad: set[int] = set()  # latent bad sectors (index = offset // SECTOR)


class _Dir:
    """A directory's inode: current entries and the entries made durable by `sync_dir`."""

    __slots__ = ("durable", "entries")

    def __init__(self) -> None:
        self.entries: dict[str, _File | _Dir] = {}
        self.durable: dict[str, _File | _Dir] = {}


def _apply(buf: bytearray, change: tuple[int, bytes] | int) -> None:
    if isinstance(change, int):
        del buf[change:]
        if len(buf) < change:
            buf.extend(bytes(change - len(buf)))
        return
    off, data = change
    if len(buf) < off:
        buf.extend(bytes(off - len(buf)))
    buf[off : off + len(data)] = data


def _touched(pending: list[tuple[int, bytes] | int], offset: int, size: int) -> bool:
    """True if an unsynced write or truncate touches [offset, offset + size)."""
    for change in pending:
        if isinstance(change, int) or (
            change[0] < offset + size and offset < change[0] + len(change[1])
        ):
            return True
    return False


class SimLock:
    """The disk's exclusive lock, held until `release` (or the holder's crash)."""

    def __init__(self, disk: SimDisk, epoch: int) -> None:
        self._disk = disk
        self._epoch = epoch

    async def release(self) -> None:
        """Give the lock back."""
        await trio.lowlevel.checkpoint()
        if self._disk._lock_holder is self:
            self._disk._release_lock()


class SimFile:
    """An open file of a `SimDisk`; dead (EBADF) once its process crashed."""

    def __init__(self, disk: SimDisk, node: _File, name: str, epoch: int) -> None:
        self.name = name
        self._disk = disk
        self._node = node
        self._epoch = epoch
        self._closed = False

    def _live(self) -> _File:
        if self._closed or self._epoch != self._disk.epoch:
            raise _oserror(_errno.EBADF, f"{self.name} is closed or its process died")
        return self._node

    async def pread(self, size: int, offset: int) -> bytes:
        """`size` bytes at `offset`; short only past the end of the file."""
        await trio.lowlevel.checkpoint()
        return self._disk._read(self._live(), self.name, size, offset)

    def pread_cached(self, size: int, offset: int) -> bytes | None:
        """The bytes when the simulated page cache has them (a seeded share), else None."""
        try:
            node = self._live()
        except OSError:
            return None
        return self._disk._read_cached(node, size, offset)

    async def preadv(self, reads: Sequence[tuple[int, int]]) -> list[bytes | OSError]:
        """Several (size, offset) reads; each result the bytes or that read's error."""
        await trio.lowlevel.checkpoint()
        node = self._live()
        out: list[bytes | OSError] = []
        for size, offset in reads:
            try:
                out.append(self._disk._read(node, self.name, size, offset))
            except OSError as exc:
                out.append(exc)
        return out

    async def pread_media(self, reads: Sequence[tuple[int, int]]) -> list[bytes | OSError]:
        """`preadv` of the durable bytes (what a power loss now leaves), not of what reads
        see: a misdirected write is not where it was aimed. As the real call (dirty pages
        stay cached), a range that unsynced changes touch reads as `pread` does."""
        await trio.lowlevel.checkpoint()
        node = self._live()
        out: list[bytes | OSError] = []
        for size, offset in reads:
            try:
                out.append(self._disk._read(node, self.name, size, offset, media=True))
            except OSError as exc:
                out.append(exc)
        return out

    async def pwritev(self, writes: Sequence[tuple[int, bytes]]) -> None:
        """Write each (offset, data) in order; not durable until `sync`."""
        await trio.lowlevel.checkpoint()
        node = self._live()
        for offset, data in writes:
            self._disk._write(node, self.name, offset, bytes(data))

    async def sync(self) -> None:
        """Every write that returned before the call becomes durable (or EIO, or slow)."""
        node = self._live()
        await self._disk._sync(node, self.name)

    async def truncate(self, size: int) -> None:
        """Set the file's size (durable at the next `sync`)."""
        await trio.lowlevel.checkpoint()
        node = self._live()
        _apply(node.data, size)
        node.pending.append(size)
        node.bad = {s for s in node.bad if s * SECTOR < size}

    async def size(self) -> int:
        """The file's current size in bytes."""
        await trio.lowlevel.checkpoint()
        return len(self._live().data)

    async def close(self) -> None:
        """Close the handle; unsynced writes stay unsynced."""
        await trio.lowlevel.checkpoint()
        self._closed = True
