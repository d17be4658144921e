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
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

import trio

from pager.disk import SECTOR
from protocol import PAGE_SIZE as PAGE

#: Power-loss modes: lose every unsynced change, or keep a seeded subset (one write torn).
POWER_MODES: Final = ("drop", "subset")

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


class SimDisk:
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

    # ------------------------------------------------------------------ paths

    def _lookup(self, name: str) -> _File | _Dir | None:
        node: _File | _Dir = self.root
        for part in [p for p in name.split("/") if p]:
            if not isinstance(node, _Dir):
                return None
            child = node.entries.get(part)
            if child is None:
                return None
            node = child
        return node

    def _parent(self, name: str) -> tuple[_Dir, str]:
        head, _, leaf = name.strip("/").rpartition("/")
        parent = self._lookup(head)
        if not isinstance(parent, _Dir) or not leaf:
            raise _oserror(_errno.ENOENT, f"no directory for {name!r}")
        return parent, leaf

    def _dir(self, name: str) -> _Dir:
        node = self._lookup(name)
        if node is None:
            raise _oserror(_errno.ENOENT, f"no directory {name!r}")
        if not isinstance(node, _Dir):
            raise _oserror(_errno.ENOTDIR, f"{name!r} is not a directory")
        return node

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

    def _release_lock(self) -> None:
        self._lock_holder = None
        self._lock_free.unpark_all()

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

    # ------------------------------------------------------------------ views

    def files(self) -> dict[str, _File]:
        """Every file reachable now, by path."""
        out: dict[str, _File] = {}

        def walk(d: _Dir, prefix: str) -> None:
            for leaf, node in d.entries.items():
                path = f"{prefix}{leaf}"
                if isinstance(node, _Dir):
                    walk(node, path + "/")
                else:
                    out[path] = node

        walk(self.root, "")
        return out

    def used_bytes(self) -> int:
        """Bytes of file data held now."""
        return sum(len(f.data) for f in self.files().values())

    def unsynced(self) -> int:
        """Writes and truncates not yet made durable, over every file."""
        return sum(len(f.pending) for f in self.files().values())

    def contents(self, name: str) -> bytes:
        """What a read of the whole file `name` sees now (for checks and tests)."""
        node = self._lookup(name)
        if not isinstance(node, _File):
            raise _oserror(_errno.ENOENT, f"no file {name!r}")
        return bytes(node.data)

    def digest(self) -> str:
        """A hash of the whole tree as reads see it (for the determinism trace)."""
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        for path, node in sorted(self.files().items()):
            h.update(path.encode() + b"\0" + len(node.data).to_bytes(8, "little"))
            h.update(node.data)
        return h.hexdigest()

    # ------------------------------------------------------------------ crashes

    def crash(self) -> None:
        """The owning process died: handles die, the lock is free, no byte is lost."""
        self.epoch += 1
        self._release_lock()
        self.counters["crashes"] += 1

    def power_loss(self, mode: str = "drop") -> dict[str, int]:
        """The machine died: unsynced changes are lost, or a seeded subset kept (one torn).

        Returns what happened: writes lost, kept and torn, directories reverted.
        """
        if mode not in POWER_MODES:
            raise ValueError(f"power-loss mode must be one of {POWER_MODES}, not {mode!r}")
        stats = Counter[str]()
        self._revert_dirs(self.root, mode, stats)
        torn_done = False
        for node in self._durable_files():
            kept: list[tuple[int, bytes] | int] = []
            for change in node.pending:
                if mode == "subset" and self.rng.random() < 0.5:
                    kept.append(change)
                else:
                    stats["lost"] += 1
            if kept and not torn_done:
                i = self.rng.randrange(len(kept))
                torn = self._tear(kept[i])
                if torn is not None:
                    kept[i] = torn
                    torn_done = True
                    stats["torn"] += 1
            for change in kept:
                _apply(node.durable, change)
            stats["kept"] += len(kept)
            node.data = bytearray(node.durable)
            node.pending.clear()
            node.bad = {s for s in node.bad if s * SECTOR < len(node.data)}
        self.crash()
        self.counters["power_losses"] += 1
        for k, v in stats.items():
            self.counters[f"power.{k}"] += v
        self.emit("disk.power_loss", mode=mode, **dict(sorted(stats.items())))
        return dict(stats)

    def _tear(self, change: tuple[int, bytes] | int) -> tuple[int, bytes] | None:
        """A write cut to a prefix of its whole sectors (None: nothing to tear)."""
        if isinstance(change, int):
            return None
        off, data = change
        # Sector boundaries inside the write, counted in absolute file offsets.
        cuts = [b - off for b in range((off // SECTOR + 1) * SECTOR, off + len(data), SECTOR)]
        if not cuts:
            return None
        return off, data[: self.rng.choice(cuts)]

    def _revert_dirs(self, d: _Dir, mode: str, stats: Counter[str]) -> None:
        if d.entries != d.durable:
            if mode == "subset" and self.rng.random() < 0.5:
                d.durable = dict(d.entries)
                stats["dirs_kept"] += 1
            else:
                d.entries = dict(d.durable)
                stats["dirs_reverted"] += 1
        for node in d.entries.values():
            if isinstance(node, _Dir):
                self._revert_dirs(node, mode, stats)

    def _durable_files(self) -> list[_File]:
        """Files reachable after the directories were reverted (in a stable order)."""
        return [node for _, node in sorted(self.files().items())]


__all__ = [
    "NO_DISK_FAULTS",
    "POWER_MODES",
    "PROCESS",
    "DiskFaults",
    "SimDisk",
    "SimFile",
    "SimLock",
]
