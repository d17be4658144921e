"""An in-memory `Disk` for store tests: unsynced writes, power loss, torn writes, crashes.

Per file (inode): the bytes a reader sees, the durable bytes, and the operations since the
last sync. Per directory: the names a reader sees and the durable names. A `power_loss`
throws away what was not synced, or (``keep="random"``) keeps a random subset of the
unsynced writes of each file, in order, tearing one kept write at a 512-byte boundary.
`crash_in(n)` makes the n-th disk operation from now raise `PowerCut` before it runs: a
crash at a random instant. `land` (a hook) can lose or misdirect writes: what it returns
lands, on what reads see and on the media alike, as the simulator's misdirected writes
do. `pread_media` reads the durable bytes (but a range an unsynced change touches reads
as `pread` does: the kernel drops no dirty page from its cache). (The simulator's disk,
in sim/, is another one; this one only serves the store's tests.)
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from pager.disk import SECTOR


class PowerCut(BaseException):
    """Raised by a `MemDisk` operation when its crash countdown runs out."""


@dataclass
class _Inode:
    data: bytearray = field(default_factory=bytearray)
    durable: bytearray = field(default_factory=bytearray)
    pending: list[tuple[str, int, bytes]] = field(default_factory=list)  # ("w"|"t", ...)


def _apply(buf: bytearray, op: tuple[str, int, bytes]) -> None:
    kind, offset, data = op
    if kind == "t":
        del buf[offset:]
        buf.extend(bytes(max(0, offset - len(buf))))
        return
    if len(buf) < offset:
        buf.extend(bytes(offset - len(buf)))
    buf[offset : offset + len(data)] = data


class MemFile:
    """One open file of a `MemDisk`."""

    def __init__(self, disk: MemDisk, name: str, inode: _Inode) -> None:
        self.disk = disk
        self.name = name
        self.inode = inode
        self.closed = False

    def _check(self) -> None:
        self.disk.tick(f"file {self.name}")
        if self.closed:
            raise OSError(errno.EBADF, "closed")

    async def pread(self, size: int, offset: int) -> bytes:
        self._check()
        data = self.inode.data[offset : offset + size]
        return self.disk.read_filter(self.name, offset, data)

    def pread_cached(self, size: int, offset: int) -> bytes | None:
        if self.closed or self.disk.no_cache:
            return None
        data = bytes(self.inode.data[offset : offset + size])
        return data if len(data) == size else None

    async def preadv(self, reads: Sequence[tuple[int, int]]) -> list[bytes | OSError]:
        self._check()
        self.disk.reads += len(reads)
        return [
            bytes(self.disk.read_filter(self.name, off, self.inode.data[off : off + size]))
            for size, off in reads
        ]

    async def pread_media(self, reads: Sequence[tuple[int, int]]) -> list[bytes | OSError]:
        self._check()
        self.disk.media_reads += len(reads)
        out: list[bytes | OSError] = []
        for size, off in reads:
            dirty = any(
                kind == "t" or (at < off + size and off < at + len(data))
                for kind, at, data in self.inode.pending
            )
            buf = self.inode.data if dirty else self.inode.durable
            out.append(bytes(self.disk.read_filter(self.name, off, buf[off : off + size])))
        return out

    async def pwritev(self, writes: Sequence[tuple[int, bytes]]) -> None:
        self._check()
        land = self.disk.land
        for offset, data in writes:
            pieces = [(offset, bytes(data))] if land is None else land(self.name, offset, data)
            for at, piece in pieces:
                op = ("w", at, bytes(piece))
                _apply(self.inode.data, op)
                self.inode.pending.append(op)

    async def sync(self) -> None:
        self._check()
        self.disk.syncs += 1
        self.inode.durable = bytearray(self.inode.data)
        self.inode.pending.clear()

    async def truncate(self, size: int) -> None:
        self._check()
        op = ("t", size, b"")
        _apply(self.inode.data, op)
        self.inode.pending.append(op)

    async def size(self) -> int:
        return len(self.inode.data)

    async def close(self) -> None:
        self.closed = True


class MemLock:
    def __init__(self, disk: MemDisk) -> None:
        self.disk = disk

    async def release(self) -> None:
        self.disk.locked = False
        self.disk.unlocked.set()


class MemDisk:
    """A `Disk` in memory (module doc). Directory names are kept flat: "a/b"."""

    def __init__(self) -> None:
        self.names: dict[str, _Inode] = {}  # what a reader sees
        self.durable_names: dict[str, _Inode] = {}
        self.dirs: set[str] = {""}
        self.locked = False
        self.unlocked = trio.Event()
        self.countdown: int | None = None
        self.syncs = 0
        self.reads = 0
        self.media_reads = 0
        self.no_cache = False
        #: (name, offset, data) -> the (offset, bytes) pieces that land (None: all, in place).
        self.land: Callable[[str, int, bytes], list[tuple[int, bytes]]] | None = None
        self.corrupt: dict[str, set[int]] = {}  # name -> offsets whose byte reads flipped

    # -- faults ------------------------------------------------------------------------

    def crash_in(self, n: int | None) -> None:
        """The n-th operation from now (1: the next) raises PowerCut; None: never."""
        self.countdown = n

    def tick(self, what: str) -> None:
        if self.countdown is not None:
            self.countdown -= 1
            if self.countdown <= 0:
                self.countdown = None
                raise PowerCut(what)

    def read_filter(self, name: str, offset: int, data: bytearray | bytes) -> bytes:
        flips = self.corrupt.get(name)
        if not flips:
            return bytes(data)
        out = bytearray(data)
        for at in flips:
            if offset <= at < offset + len(out):
                out[at - offset] ^= 0xFF
        return bytes(out)

    def power_loss(self, rng: random.Random | None = None) -> None:
        """Lose what was not synced (with `rng`: keep a random subset, one write torn)."""
        self.countdown = None
        self.locked = False
        self.unlocked.set()
        inodes = {id(i): i for i in [*self.names.values(), *self.durable_names.values()]}
        for inode in inodes.values():
            kept = bytearray(inode.durable)
            if rng is not None and inode.pending:
                ops = [op for op in inode.pending if rng.random() < 0.5]
                torn = rng.randrange(len(ops)) if ops else -1
                for i, op in enumerate(ops):
                    if i == torn and op[0] == "w" and len(op[2]) > SECTOR:
                        _, offset, data = op
                        for at in range(0, len(data), SECTOR):  # some whole sectors land
                            if rng.random() < 0.5:
                                _apply(kept, ("w", offset + at, data[at : at + SECTOR]))
                        continue
                    _apply(kept, op)
            inode.data = bytearray(kept)
            inode.durable = bytearray(kept)
            inode.pending.clear()
        if rng is not None and rng.random() < 0.5:
            self.durable_names = dict(self.names)  # the directory's changes happened to land
        self.names = dict(self.durable_names)

    def path_bytes(self, name: str) -> bytearray:
        """A file's bytes, for tests that damage it (changes are durable at once)."""
        inode = self.names[name]
        return inode.data

    def set_bytes(self, name: str, data: bytes) -> None:
        inode = self.names[name]
        inode.data = bytearray(data)
        inode.durable = bytearray(data)
        inode.pending.clear()

    # -- the Disk interface --------------------------------------------------------------

    async def open(self, name: str, *, create: bool = False) -> MemFile:
        self.tick(f"open {name}")
        inode = self.names.get(name)
        if inode is None:
            if not create:
                raise FileNotFoundError(errno.ENOENT, "no such file", name)
            inode = self.names[name] = _Inode()
        return MemFile(self, name, inode)

    async def exists(self, name: str) -> bool:
        return name in self.names or name in self.dirs

    async def listdir(self, name: str = "") -> list[str]:
        prefix = f"{name}/" if name else ""
        out = {
            n[len(prefix) :].split("/")[0]
            for n in [*self.names, *self.dirs]
            if n.startswith(prefix) and n != name and n[len(prefix) :]
        }
        return sorted(out)

    async def mkdir(self, name: str) -> None:
        self.tick(f"mkdir {name}")
        self.dirs.add(name)

    async def rename(self, src: str, dst: str) -> None:
        self.tick(f"rename {src}")
        if src not in self.names:
            raise FileNotFoundError(errno.ENOENT, "no such file", src)
        self.names[dst] = self.names.pop(src)

    async def remove(self, name: str) -> None:
        self.tick(f"remove {name}")
        if name not in self.names:
            raise FileNotFoundError(errno.ENOENT, "no such file", name)
        del self.names[name]

    async def sync_dir(self, name: str = "") -> None:
        self.tick(f"sync_dir {name}")
        prefix = f"{name}/" if name else ""
        for n in set(self.names) | set(self.durable_names):
            if n.startswith(prefix) and "/" not in n[len(prefix) :]:
                if n in self.names:
                    self.durable_names[n] = self.names[n]
                else:
                    self.durable_names.pop(n, None)

    async def lock(self, wait: float) -> MemLock:
        with trio.move_on_after(wait):
            while self.locked:
                await self.unlocked.wait()
        if self.locked:
            raise BlockingIOError(errno.EWOULDBLOCK, "locked")
        self.locked = True
        self.unlocked = trio.Event()
        return MemLock(self)
