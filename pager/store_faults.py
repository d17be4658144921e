"""Store fault injection (``--faults store.*``) as a `Disk` wrapper.

`FaultyDisk` wraps any `Disk`; the files it opens whose name ends with the pages file's
consult the `Faults` spec before each operation (meta.json and the lock are left alone,
so that ``@N`` counts page-out passes as before):

- ``store.write``: each `pwritev` (one per disk phase) raises ENOSPC or EIO;
- ``store.fsync`` then ``store.commit``: each `sync` (the sync that commits a phase's
  records) raises ENOSPC or EIO;
- ``store.read``: each slot read (each element of a `preadv`; header pages, read at open,
  are not slot reads) raises, or with ``corrupt`` returns the bytes with one flipped.
  `pread_cached` returns None while read faults are armed, so that every read passes here.
  A phase's read-back of its header pages (`pread_media`) passes through unfaulted, as
  header page reads do.
"""

from __future__ import annotations

from collections.abc import Sequence

from .disk import Disk, DiskFile, DiskProxy, FileProxy
from .faults import NO_FAULTS, Faults, store_oserror
from .store_format import EXTENT_BYTES

#: Files whose name ends with this get faults (the pages file, and its migration copy).
FAULTY_SUFFIXES = ("pages.xp", "pages.xp.migrating")


def _flipped(data: bytes) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    out[len(out) // 2] ^= 0x5A
    return bytes(out)


class FaultyFile(FileProxy):
    """A `DiskFile` that consults `faults` before each operation."""

    def __init__(self, inner: DiskFile, faults: Faults) -> None:
        super().__init__(inner)
        self.faults = faults

    def _read_fault(self, offset: int) -> str | None:
        if offset % EXTENT_BYTES == 0:
            return None  # a header page (recovery), not a slot read
        return self.faults.store_fault("read")

    async def pread(self, size: int, offset: int) -> bytes:
        action = self._read_fault(offset)
        if action in ("ENOSPC", "EIO"):
            raise store_oserror(action, "store.read")
        data = await self.inner.pread(size, offset)
        return _flipped(data) if action == "corrupt" else data

    def pread_cached(self, size: int, offset: int) -> bytes | None:
        if "read" in self.faults._store:
            return None
        return self.inner.pread_cached(size, offset)

    async def preadv(self, reads: Sequence[tuple[int, int]]) -> list[bytes | OSError]:
        actions = [self._read_fault(offset) for _, offset in reads]
        got = await self.inner.preadv(reads)
        out: list[bytes | OSError] = []
        for action, data in zip(actions, got, strict=True):
            if action in ("ENOSPC", "EIO"):
                out.append(store_oserror(action, "store.read"))
            elif action == "corrupt" and isinstance(data, bytes):
                out.append(_flipped(data))
            else:
                out.append(data)
        return out

    async def pwritev(self, writes: Sequence[tuple[int, bytes]]) -> None:
        action = self.faults.store_fault("write")
        if action is not None:
            raise store_oserror(action, "store.write")
        await self.inner.pwritev(writes)

    async def sync(self) -> None:
        for op in ("fsync", "commit"):
            action = self.faults.store_fault(op)
            if action is not None:
                raise store_oserror(action, f"store.{op}")
        await self.inner.sync()


class FaultyDisk(DiskProxy):
    """A `Disk` whose pages file fails as `faults` says (module doc)."""

    def __init__(self, inner: Disk, faults: Faults) -> None:
        super().__init__(inner)
        self.faults = faults

    def wrap(self, name: str, f: DiskFile) -> DiskFile:
        return FaultyFile(f, self.faults) if name.endswith(FAULTY_SUFFIXES) else f


def faulty_disk(disk: Disk, faults: Faults) -> Disk:
    """`disk`, wrapped when `faults` names store faults."""
    return FaultyDisk(disk, faults) if faults is not NO_FAULTS and faults._store else disk
