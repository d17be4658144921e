"""A `Disk` wrapper for pager tests: counts the pages file's operations (media read-backs
apart from reads), can hold a sync
(until the test lets it go) and can refuse the page-cache path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from pager.disk import Disk, DiskFile, DiskProxy, FileProxy
from pager.store import PAGES


class CallLog(FileProxy):
    """A file wrapper that logs its write, sync and media-read calls in `calls`: it passes
    `write_and_sync` on as separate calls (no `pwritev_sync` of its own)."""

    def __init__(self, inner: DiskFile) -> None:
        super().__init__(inner)
        self.calls: list[str] = []

    async def pwritev(self, writes: Sequence[tuple[int, bytes]]) -> None:
        self.calls.append("pwritev")
        await self.inner.pwritev(writes)

    async def sync(self) -> None:
        self.calls.append("sync")
        await self.inner.sync()

    async def pread_media(self, reads: Sequence[tuple[int, int]]) -> list[bytes | OSError]:
        self.calls.append("pread_media")
        return await self.inner.pread_media(reads)


class HookedFile(FileProxy):
    def __init__(self, inner: DiskFile, disk: HookedDisk) -> None:
        super().__init__(inner)
        self.disk = disk

    async def pread(self, size: int, offset: int) -> bytes:
        self.disk.reads += 1
        return await self.inner.pread(size, offset)

    def pread_cached(self, size: int, offset: int) -> bytes | None:
        return None if self.disk.no_cache else self.inner.pread_cached(size, offset)

    async def preadv(self, reads: Sequence[tuple[int, int]]) -> list[bytes | OSError]:
        self.disk.reads += len(reads)
        return await self.inner.preadv(reads)

    async def pread_media(self, reads: Sequence[tuple[int, int]]) -> list[bytes | OSError]:
        self.disk.media_reads += len(reads)
        return await self.inner.pread_media(reads)

    async def pwritev(self, writes: Sequence[tuple[int, bytes]]) -> None:
        self.disk.writes += 1
        await self.inner.pwritev(writes)

    async def sync(self) -> None:
        self.disk.syncs += 1
        if self.disk.before_sync is not None:
            await self.disk.before_sync()
        await self.inner.sync()


class HookedDisk(DiskProxy):
    """`inner`, with the pages file's reads, writes and syncs counted (and hooked)."""

    def __init__(self, inner: Disk, *, no_cache: bool = False) -> None:
        super().__init__(inner)
        self.no_cache = no_cache
        self.reads = self.writes = self.syncs = self.media_reads = 0
        self.before_sync: Callable[[], Awaitable[None]] | None = None

    def wrap(self, name: str, f: DiskFile) -> DiskFile:
        return HookedFile(f, self) if name == PAGES else f
