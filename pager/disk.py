"""The `Disk` interface: every durable byte and every sync of the pager's store goes through it.

DESIGN.md ("pager") and SIM.md ("The simulated disk"): the store is written against this
interface only, so the same store code runs over real files in production (blocking calls
in worker threads) and over the simulator's in-memory disk (synchronous, with power loss,
torn writes, latent sector errors, misdirected writes, ENOSPC, EIO and slow syncs).

Names are paths relative to the disk's root (the state directory), with ``/`` as separator
(``"pages.xp"``, ``"aside-1/pages.xp"``). Errors are `OSError` with an errno
(``ENOENT``, ``ENOSPC``, ``EIO``, ...), as the real calls raise them.

Durability model (what a power loss may do): a write is durable once a `DiskFile.sync` of
its file returned after it; a rename, create or remove is durable once `Disk.sync_dir` of
its directory returned after it. Until then a power loss may drop it, keep it, or (writes)
keep only some whole 512-byte sectors of it. A process crash loses nothing that the call
returned for: the OS keeps it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Final, Protocol

import trio

#: The unit a power loss tears writes at: a write survives as whole sectors of this size.
SECTOR: Final = 512


class DiskFile(Protocol):
    """One open file of a `Disk`."""

    name: str

    async def pread(self, size: int, offset: int) -> bytes:
        """`size` bytes at `offset`; short only past the end of the file."""
        ...

    def pread_cached(self, size: int, offset: int) -> bytes | None:
        """The same bytes if they can be had without blocking (the page cache holds them all),
        else None. Never blocks and never raises: a failure is None, and the caller then
        reads with `pread`, which reports it."""
        ...

    async def preadv(self, reads: Sequence[tuple[int, int]]) -> list[bytes | OSError]:
        """Several (size, offset) reads in one call (one worker thread round trip); each
        result is the bytes or the error of that read alone."""
        ...

    async def pread_media(self, reads: Sequence[tuple[int, int]]) -> list[bytes | OSError]:
        """`preadv` from the media: each (size, offset) read as a power loss now would leave
        it, never a cache's copy of what was written. After a `sync` it tells whether the
        synced writes landed where they were aimed: a lost or misdirected write reads back
        the old bytes (`write_and_sync`'s read-back)."""
        ...

    async def pwritev(self, writes: Sequence[tuple[int, bytes]]) -> None:
        """Write each (offset, data) in order, all of each; in one call (one worker thread
        round trip). Not durable until `sync`."""
        ...

    async def sync(self) -> None:
        """fdatasync: every write to this file that returned before the call is durable."""
        ...

    async def truncate(self, size: int) -> None:
        """Set the file's size (durable at the next `sync`)."""
        ...

    async def size(self) -> int:
        """The file's current size in bytes (unsynced writes included)."""
        ...

    async def close(self) -> None:
        """Close the file; unsynced writes stay as unsynced as they were."""
        ...


class DiskLock(Protocol):
    """The exclusive lock on a disk (one pager process per store)."""

    async def release(self) -> None:
        """Give the lock back."""
        ...


class Disk(Protocol):
    """A directory of files the store owns: the state directory, or the simulator's."""

    async def open(self, name: str, *, create: bool = False) -> DiskFile:
        """Open `name` for reading and writing; create it empty if `create` and it is
        missing (the creation is durable after `sync_dir`). ENOENT if missing otherwise."""
        ...

    async def exists(self, name: str) -> bool:
        """True if a file or directory `name` exists."""
        ...

    async def listdir(self, name: str = "") -> list[str]:
        """The entries of directory `name` (the root by default), sorted."""
        ...

    async def mkdir(self, name: str) -> None:
        """Create directory `name` (no error if it exists)."""
        ...

    async def rename(self, src: str, dst: str) -> None:
        """Rename a file or directory atomically, replacing a file `dst`."""
        ...

    async def remove(self, name: str) -> None:
        """Remove file `name` (ENOENT if missing)."""
        ...

    async def sync_dir(self, name: str = "") -> None:
        """fsync directory `name`: creates, renames and removes in it are durable."""
        ...

    async def lock(self, wait: float) -> DiskLock:
        """Take the disk's exclusive lock, waiting at most `wait` seconds of trio time;
        `BlockingIOError` (EWOULDBLOCK) when another holder kept it that long."""
        ...


def join_runs(writes: Sequence[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """`writes` sorted by offset, with adjacent ones joined into one bytes (fewer writes,
    for a file that takes them one by one; `RealDiskFile.pwritev_sync` gathers adjacent
    writes into one `pwritev` system call itself, with no copy)."""
    out: list[tuple[int, bytes]] = []
    run: list[bytes] = []
    start = end = -1
    for offset, data in sorted(writes, key=lambda w: w[0]):
        if offset != end:
            if run:
                out.append((start, b"".join(run)))
            run, start = [], offset
        run.append(data)
        end = offset + len(data)
    if run:
        out.append((start, b"".join(run)))
    return out


async def write_and_sync(
    f: DiskFile, writes: Sequence[tuple[int, bytes]], back: Sequence[tuple[int, int]] = ()
) -> list[bytes | OSError]:
    """`f.pwritev(writes)`, `f.sync()`, then `f.pread_media(back)` (the (size, offset)
    reads of `back`, from the media; nothing when empty): its result. In one call where
    the file offers one (``pwritev_sync``, one worker thread trip instead of three, as
    `RealDiskFile` does, gathering adjacent writes without a copy), else as the separate
    calls, adjacent writes joined (`join_runs`). Files that lack it (the simulator's,
    `FileProxy` wrappers, which override the calls) keep working unchanged; a wrapper
    passes it on only by defining it itself."""
    both = getattr(f, "pwritev_sync", None)
    if both is not None:
        got: list[bytes | OSError] = await both(writes, back)
        return got
    await f.pwritev(join_runs(writes))
    await f.sync()
    return await f.pread_media(back) if back else []


@asynccontextmanager
async def held(lock: trio.Lock) -> AsyncIterator[None]:
    """`async with lock`, with no checkpoint when the lock is free: `trio.Lock.acquire`
    always yields to every other runnable task first, a scheduler pass between one disk
    phase and the next (BENCHMARKS.md, fourteenth round). The store's phase yields
    anyway, at its disk calls."""
    if lock.locked():
        await lock.acquire()
    else:
        lock.acquire_nowait()
    try:
        yield
    finally:
        lock.release()


class FileProxy:
    """A `DiskFile` that hands every call to `inner`: subclass it and override the calls a
    wrapper changes (fault injection, counting)."""

    def __init__(self, inner: DiskFile) -> None:
        self.inner = inner
        self.name = inner.name

    async def pread(self, size: int, offset: int) -> bytes:
        return await self.inner.pread(size, offset)

    def pread_cached(self, size: int, offset: int) -> bytes | None:
        return self.inner.pread_cached(size, offset)

    async def preadv(self, reads: Sequence[tuple[int, int]]) -> list[bytes | OSError]:
        return await self.inner.preadv(reads)

    async def pread_media(self, reads: Sequence[tuple[int, int]]) -> list[bytes | OSError]:
        return await self.inner.pread_media(reads)

    async def pwritev(self, writes: Sequence[tuple[int, bytes]]) -> None:
        await self.inner.pwritev(writes)

    async def sync(self) -> None:
        await self.inner.sync()

    async def truncate(self, size: int) -> None:
        await self.inner.truncate(size)

    async def size(self) -> int:
        return await self.inner.size()

    async def close(self) -> None:
        await self.inner.close()


class DiskProxy:
    """A `Disk` that hands every call to `inner`, each opened file through `wrap`."""

    def __init__(self, inner: Disk) -> None:
        self.inner = inner

    def wrap(self, name: str, f: DiskFile) -> DiskFile:
        """The file to hand out for `f`, opened as `name` (`f` here; wrappers override)."""
        return f

    async def open(self, name: str, *, create: bool = False) -> DiskFile:
        return self.wrap(name, await self.inner.open(name, create=create))

    async def exists(self, name: str) -> bool:
        return await self.inner.exists(name)

    async def listdir(self, name: str = "") -> list[str]:
        return await self.inner.listdir(name)

    async def mkdir(self, name: str) -> None:
        await self.inner.mkdir(name)

    async def rename(self, src: str, dst: str) -> None:
        await self.inner.rename(src, dst)

    async def remove(self, name: str) -> None:
        await self.inner.remove(name)

    async def sync_dir(self, name: str = "") -> None:
        await self.inner.sync_dir(name)

    async def lock(self, wait: float) -> DiskLock:
        return await self.inner.lock(wait)
