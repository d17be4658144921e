"""A `Disk` wrapper for pager tests: counts the pages file's operations, can hold a sync
(until the test lets it go) and can refuse the page-cache path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from pager.disk import Disk, DiskFile, DiskLock
from pager.store import PAGES


class HookedFile:
    def __init__(self, inner: DiskFile, disk: HookedDisk) -> None:
        self.inner = inner
        self.disk = disk
        self.name = inner.name

    async def pread(self, size: int, offset: int) -> bytes:
        self.disk.reads += 1
        return await self.inner.pread(size, offset)

    def pread_cached(self, size: int, offset: int) -> bytes | None:
        return None if self.disk.no_cache else self.inner.pread_cached(size, offset)

    async def preadv(self, reads: Sequence[tuple[int, int]]) -> list[bytes | OSError]:
        self.disk.reads += len(reads)
        return await self.inner.preadv(reads)

    async def pwritev(self, writes: Sequence[tuple[int, bytes]]) -> None:
        self.disk.writes += 1
        await self.inner.pwritev(writes)

    async def sync(self) -> None:
        self.disk.syncs += 1
        if self.disk.before_sync is not None:
            await self.disk.before_sync()
        await self.inner.sync()

    async def truncate(self, size: int) -> None:
        await self.inner.truncate(size)

    async def size(self) -> int:
        return await self.inner.size()

    async def close(self) -> None:
        await self.inner.close()


class HookedDisk:
    """`inner`, with the pages file's reads, writes and syncs counted (and hooked)."""

    def __init__(self, inner: Disk, *, no_cache: bool = False) -> None:
        self.inner = inner
        self.no_cache = no_cache
        self.reads = self.writes = self.syncs = 0
        self.before_sync: Callable[[], Awaitable[None]] | None = None

    async def open(self, name: str, *, create: bool = False) -> DiskFile:
        f = await self.inner.open(name, create=create)
        return HookedFile(f, self) if name == PAGES else f

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
