"""The simulated disk: `pager.disk`'s `Disk` in memory, with power loss and sector faults.

SIM.md ("The simulated disk"). Per file: durable bytes, plus the writes (and truncates)
since its last `sync`. Per directory: durable entries, plus the creates, renames and
removes since its last `sync_dir`. Everything is synchronous and in memory; the only
await that can take simulated time is a slow sync (`trio.sleep`), so under `MockClock`
nothing ever waits on a thread.

- `crash()`: the process dies. Nothing is lost (the OS keeps every write that returned);
  the lock is released and every open handle is dead (`EBADF` if a zombie uses it).
- `power_loss(mode)`: the machine dies. `"drop"`: every unsynced write and metadata change
  is lost. `"subset"`: each unsynced write survives or not by a seeded coin, and one of the
  survivors is torn: only some of its whole 512-byte sectors land; each directory's
  unsynced changes survive all together or not at all.
- Faults (`DiskFaults`, each a per-operation probability, drawn from the disk's seeded
  generator): `EIO` on read, write or sync; `ENOSPC` on a write that grows a file (and a
  hard `capacity`); latent sector errors (a sector a write touched reads back corrupted
  until rewritten); misdirected writes (the data lands at another sector-aligned offset);
  slow syncs (sleep `slow_sync_s` of trio time).
"""

from __future__ import annotations

import errno as _errno
import random
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

import trio

from pager.disk import SECTOR
from protocol import PAGE_SIZE as PAGE

from .disk_files import SimFile, SimLock, _apply, _Dir, _File, _oserror, _touched
from .disk_tree import POWER_MODES, DiskTree

#: Share of `pread_cached` calls answered from the "page cache" (the rest say None).
CACHED_SHARE: Final = 0.5

Emit = Callable[..., None]

#: The disk epoch of the simulated process the current task belongs to (None: no process,
#: e.g. a test or the checker). Once that process died, every call of its tasks fails
#: with EBADF before it has any effect: no cleanup of a dead process reaches the disk.
PROCESS: ContextVar[int | None] = ContextVar("sim_disk_process", default=None)


def _noop(event: str, **fields: Any) -> None:
    """The default event sink: nothing."""


@dataclass(frozen=True, slots=True)
class DiskFaults:
    """Per-operation probabilities of each disk fault (0: never)."""

    eio_read: float = 0.0
    eio_write: float = 0.0
    eio_sync: float = 0.0
    enospc: float = 0.0  # a write that grows a file fails with ENOSPC
    latent: float = 0.0  # a write leaves one of its sectors unreadable (corrupted on read)
    misdirect: float = 0.0  # a write lands at another sector-aligned offset
    slow_sync: float = 0.0
    slow_sync_s: float = 0.05
    capacity: int | None = None  # bytes of file data the disk holds at most

    @property
    def any(self) -> bool:
        """True when some fault can fire."""
        return (
            self.capacity is not None
            or any(
                getattr(self, f) > 0
                for f in ("eio_read", "eio_write", "eio_sync", "enospc", "latent", "misdirect")
            )
            or self.slow_sync > 0
        )


NO_DISK_FAULTS: Final = DiskFaults()


class SimDisk(DiskTree):
    """An in-memory directory tree with the durability model of `pager.disk`."""

    def __init__(
        self, rng: random.Random, faults: DiskFaults = NO_DISK_FAULTS, emit: Emit = _noop
    ) -> None:
        self.rng = rng
        self.faults = faults
        self.emit = emit
        self.root = _Dir()
        self.epoch = 0  # bumped by every crash and power loss: old handles die
        self.counters: Counter[str] = Counter()
        self._lock_holder: SimLock | None = None
        self._lock_free = trio.lowlevel.ParkingLot()

    # ------------------------------------------------------------------ Disk

    async def open(self, name: str, *, create: bool = False) -> SimFile:
        """Open `name`; create it empty if `create` (durable after `sync_dir`)."""
        await trio.lowlevel.checkpoint()
        self._alive()
        parent, leaf = self._parent(name)
        node = parent.entries.get(leaf)
        if node is None:
            if not create:
                raise _oserror(_errno.ENOENT, f"no file {name!r}")
            node = parent.entries[leaf] = _File()
        if not isinstance(node, _File):
            raise _oserror(_errno.EISDIR, f"{name!r} is a directory")
        return SimFile(self, node, name, self.epoch)

    async def exists(self, name: str) -> bool:
        """True if a file or directory `name` exists."""
        await trio.lowlevel.checkpoint()
        self._alive()
        return self._lookup(name) is not None

    async def listdir(self, name: str = "") -> list[str]:
        """The entries of directory `name`, sorted."""
        await trio.lowlevel.checkpoint()
        self._alive()
        return sorted(self._dir(name).entries)

    async def mkdir(self, name: str) -> None:
        """Create directory `name` (no error if it exists)."""
        await trio.lowlevel.checkpoint()
        self._alive()
        parent, leaf = self._parent(name)
        node = parent.entries.get(leaf)
        if node is None:
            parent.entries[leaf] = _Dir()
        elif not isinstance(node, _Dir):
            raise _oserror(_errno.EEXIST, f"{name!r} is a file")

    async def rename(self, src: str, dst: str) -> None:
        """Move `src` to `dst` atomically, replacing a file `dst`."""
        await trio.lowlevel.checkpoint()
        self._alive()
        sparent, sleaf = self._parent(src)
        node = sparent.entries.get(sleaf)
        if node is None:
            raise _oserror(_errno.ENOENT, f"no file {src!r}")
        dparent, dleaf = self._parent(dst)
        old = dparent.entries.get(dleaf)
        if isinstance(old, _Dir) and old is not node:
            raise _oserror(_errno.EISDIR, f"{dst!r} is a directory")
        del sparent.entries[sleaf]
        dparent.entries[dleaf] = node

    async def remove(self, name: str) -> None:
        """Remove file `name` (ENOENT if missing)."""
        await trio.lowlevel.checkpoint()
        self._alive()
        parent, leaf = self._parent(name)
        node = parent.entries.get(leaf)
        if node is None:
            raise _oserror(_errno.ENOENT, f"no file {name!r}")
        if isinstance(node, _Dir):
            raise _oserror(_errno.EISDIR, f"{name!r} is a directory")
        del parent.entries[leaf]

    async def sync_dir(self, name: str = "") -> None:
        """Creates, renames and removes in directory `name` become durable."""
        await trio.lowlevel.checkpoint()
        self._alive()
        node = self._dir(name)
        node.durable = dict(node.entries)
        self.counters["sync_dir"] += 1

    async def lock(self, wait: float) -> SimLock:
        """The exclusive lock, waiting at most `wait` s of trio time (BlockingIOError)."""
        await trio.lowlevel.checkpoint()
        self._alive()
        with trio.move_on_after(wait):
            while self._lock_holder is not None:
                await self._lock_free.park()
        if self._lock_holder is not None:
            raise BlockingIOError(_errno.EWOULDBLOCK, "the store is locked by another holder")
        self._lock_holder = SimLock(self, self.epoch)
        return self._lock_holder

    def _alive(self) -> None:
        """EBADF if the calling task's process (`PROCESS`) has died."""
        owner = PROCESS.get()
        if owner is not None and owner != self.epoch:
            raise _oserror(_errno.EBADF, "the calling process died")

    # ------------------------------------------------------------------ file I/O

    def _read(
        self, node: _File, name: str, size: int, offset: int, *, media: bool = False
    ) -> bytes:
        if self.faults.eio_read and self.rng.random() < self.faults.eio_read:
            self._fault("eio_read", name, offset=offset)
            raise _oserror(_errno.EIO, f"read of {name}")
        dirty = media and _touched(node.pending, offset, size)
        data = bytes((node.durable if media and not dirty else node.data)[offset : offset + size])
        if node.bad and data:
            first, last = offset // SECTOR, (offset + len(data) - 1) // SECTOR
            hit = sorted(s for s in node.bad if first <= s <= last)
            if hit:
                buf = bytearray(data)
                for s in hit:
                    at = max(s * SECTOR, offset) - offset
                    buf[at] ^= 0xA5  # a latent error: the sector comes back wrong
                self.counters["latent_reads"] += 1
                data = bytes(buf)
        return data

    def _read_cached(self, node: _File, size: int, offset: int) -> bytes | None:
        # Page by page, as reads of one page each would have (the store reads a run of
        # slots in one call): each page must be in the cache, and the draws come in the
        # same order, so a run read keeps every seed's schedule.
        end = offset + size
        for at in range(offset, max(end, offset + 1), PAGE):
            stop = min(at + PAGE, end)
            sectors = range(at // SECTOR, -(-stop // SECTOR))
            if stop > len(node.data) or any(s in sectors for s in node.bad):
                return None
            if self.rng.random() >= CACHED_SHARE:
                return None
        return bytes(node.data[offset:end])

    def _write(self, node: _File, name: str, offset: int, data: bytes) -> None:
        f = self.faults
        if f.eio_write and self.rng.random() < f.eio_write:
            self._fault("eio_write", name, offset=offset)
            raise _oserror(_errno.EIO, f"write of {name}")
        grow = offset + len(data) - len(node.data)
        if grow > 0:
            if f.capacity is not None and self.used_bytes() + grow > f.capacity:
                self._fault("enospc", name, offset=offset, capacity=f.capacity)
                raise _oserror(_errno.ENOSPC, f"write of {name} (disk full)")
            if f.enospc and self.rng.random() < f.enospc:
                self._fault("enospc", name, offset=offset)
                raise _oserror(_errno.ENOSPC, f"write of {name}")
        self.counters["writes"] += 1
        at = offset
        if f.misdirect and len(data) and self.rng.random() < f.misdirect:
            sectors = max(1, (len(node.data) + len(data)) // SECTOR)
            at = self.rng.randrange(sectors) * SECTOR
            if at == offset:
                at = offset + SECTOR * max(1, len(data) // SECTOR)
            self._fault("misdirect", name, offset=offset, landed=at)
        change = (at, data)
        _apply(node.data, change)
        node.pending.append(change)
        first, last = at // SECTOR, (at + len(data) - 1) // SECTOR
        if node.bad and data:
            node.bad = {s for s in node.bad if not first <= s <= last}
        if f.latent and data and self.rng.random() < f.latent:
            sector = self.rng.randint(first, last)
            node.bad.add(sector)
            self._fault("latent", name, sector=sector)

    async def _sync(self, node: _File, name: str) -> None:
        f = self.faults
        if f.slow_sync and self.rng.random() < f.slow_sync:
            self._fault("slow_sync", name, seconds=f.slow_sync_s)
            await trio.sleep(f.slow_sync_s)
        else:
            await trio.lowlevel.checkpoint()
        if f.eio_sync and self.rng.random() < f.eio_sync:
            # The writes stay unsynced: a later sync may still make them durable, a power
            # loss before it loses them (what fsync's EIO promises, at best).
            self._fault("eio_sync", name)
            raise _oserror(_errno.EIO, f"sync of {name}")
        for change in node.pending:
            _apply(node.durable, change)
        node.pending.clear()
        self.counters["syncs"] += 1

    def _fault(self, kind: str, name: str, **fields: Any) -> None:
        self.counters[f"fault.{kind}"] += 1
        self.emit("disk.fault", kind=kind, file=name, **fields)


__all__ = [
    "NO_DISK_FAULTS",
    "POWER_MODES",
    "PROCESS",
    "DiskFaults",
    "SimDisk",
    "SimFile",
    "SimLock",
]
