"""`RealDisk`: the production `Disk` (pager/disk.py) over a state directory of real files.

Every blocking call runs in a trio worker thread, one thread round trip per call (a whole
`preadv` or `pwritev` list is one trip; `pwritev_sync`, a disk phase's write and its sync,
and its read-back, is one trip too). The calls of disk phases and slot reads are handed to
the thread at once (`in_worker`), not after a pass of the scheduler. `pread_cached` reads
on the event loop with RWF_NOWAIT, which never blocks on the disk. `pread_media` reads from
the device through a second, O_DIRECT descriptor of the file (opened on first use), which
bypasses the page cache. POSIX_FADV_DONTNEED then pread is only the fallback where O_DIRECT
is refused (tmpfs, some FUSE filesystems): it is weaker, because the kernel drops no page
that is dirty nor, measured on Linux 6.18 ext4, a clean 4 KiB page inside a large folio
(any page written by a pwrite of 16 KiB or more, as a phase's runs are): the read then
comes from the page cache, and a lost write would read back as landed. The lock is `flock`
on ``<root>/lock``, polled with trio sleeps for at most `wait` seconds of trio time (flock
has no timeout).
"""

from __future__ import annotations

import errno as _errno
import fcntl
import mmap
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

import trio

if TYPE_CHECKING:
    from outcome import Outcome

from transport.connection import IOV_MAX

#: Seconds between attempts to take the lock while another process holds it.
LOCK_POLL: Final = 0.05

#: The lock file's name in the root (kept out of `listdir`'s concerns: it is just a file).
LOCK_NAME: Final = "lock"


#: Direct reads are rounded out to this alignment (the page size: a multiple of any
#: logical block size O_DIRECT asks for), into a page-aligned buffer (an anonymous mmap).
DIRECT_ALIGN: Final = mmap.PAGESIZE


class _DirectBuffer:
    """A page-aligned buffer (an anonymous mmap) for O_DIRECT reads, kept between reads:
    a mapping made and unmapped per read cost two system calls and the page faults of a
    fresh mapping, for every header page a disk phase reads back. One file reads back in
    one worker thread at a time (the store's phases are serialised); the lock makes it so
    for any caller."""

    def __init__(self) -> None:
        self._buf: mmap.mmap | None = None
        self.lock = threading.Lock()

    def get(self, size: int) -> mmap.mmap:
        """A buffer of at least `size` bytes (a multiple of DIRECT_ALIGN); hold `lock`."""
        if self._buf is None or len(self._buf) < size:
            if self._buf is not None:
                self._buf.close()
            self._buf = mmap.mmap(-1, size)
        return self._buf

    def close(self) -> None:
        """Unmap the buffer (the file is closing)."""
        with self.lock:
            if self._buf is not None:
                self._buf.close()
                self._buf = None


def _pread_direct(fd: int, size: int, offset: int, direct: _DirectBuffer) -> bytes:
    """`size` bytes at `offset` through the O_DIRECT descriptor `fd`: from the device."""
    start = offset - offset % DIRECT_ALIGN
    end = -(-(offset + size) // DIRECT_ALIGN) * DIRECT_ALIGN
    length = max(end - start, DIRECT_ALIGN)
    with direct.lock:
        buf = direct.get(length)
        with memoryview(buf)[:length] as view:
            n = os.preadv(fd, [view], start)
            return bytes(view[offset - start : max(offset - start, min(n, offset - start + size))])


def _pread_dropped(fd: int, size: int, offset: int) -> bytes:
    """The fallback: drop the range from the page cache, then pread (module doc: weaker)."""
    os.posix_fadvise(fd, offset, size, os.POSIX_FADV_DONTNEED)
    return os.pread(fd, size, offset)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _pwrite_gathered(fd: int, writes: Sequence[tuple[int, bytes]]) -> None:
    """Each (offset, data) written whole, in order, a write that starts where the one
    before it ended gathered with it into one `pwritev` (no copy: a disk phase's data
    slots lie next to each other, and the store sorts them; joining them into one bytes
    on the event loop cost a copy of the whole phase)."""
    i, n = 0, len(writes)
    while i < n:
        offset, data = writes[i]
        bufs = [data]
        end = offset + len(data)
        i += 1
        while i < n and writes[i][0] == end and len(bufs) < IOV_MAX:
            data = writes[i][1]
            bufs.append(data)
            end += len(data)
            i += 1
        done = os.pwritev(fd, bufs, offset) if len(bufs) > 1 else os.pwrite(fd, bufs[0], offset)
        if done < end - offset:  # a short write: the rest (rare), with a copy
            _pwrite_all(fd, b"".join(bufs)[done:], offset + done)


_T = TypeVar("_T")


async def in_worker(fn: Callable[[], _T]) -> _T:
    """`fn()` in one of trio's cached worker threads, handed over at once: its result, or
    its exception. `trio.to_thread.run_sync` first takes its capacity limiter, a checkpoint,
    so on a busy event loop the job waits for every other runnable task's turn before the
    disk sees it: 0.8-1.8 ms of page-out's 11-16 ms disk phases (BENCHMARKS.md, fourteenth
    round). No limiter is needed: the pager bounds its disk calls itself (one disk phase at
    a time, page-in batches by their semaphore). As with `run_sync`, a call already
    cancelled raises at once, and a cancel does not abandon a call under way: it takes
    effect at the caller's next checkpoint, once the thread is done."""
    await trio.lowlevel.checkpoint_if_cancelled()  # no yield unless cancelled
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def deliver(result: Outcome[_T]) -> None:
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    trio.lowlevel.start_thread_soon(fn, deliver)
    got: _T = await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
    return got


class RealDiskFile:
    """One open file of a `RealDisk` (see `pager.disk.DiskFile`)."""

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self._fd = fd
        #: The O_DIRECT descriptor of `pread_media` (None: not opened yet; -1: refused).
        self._direct: int | None = None
        self._direct_buf = _DirectBuffer()

    def _read_media(self, reads: Sequence[tuple[int, int]]) -> list[bytes | OSError]:
        """Each (size, offset) read from the device (module doc); in a worker thread."""
        if self._direct is None:
            try:
                self._direct = os.open(
                    f"/proc/self/fd/{self._fd}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC
                )
            except OSError:
                self._direct = -1  # O_DIRECT refused here: the fallback
        out: list[bytes | OSError] = []
        for size, offset in reads:
            try:
                if self._direct >= 0:
                    try:
                        out.append(_pread_direct(self._direct, size, offset, self._direct_buf))
                        continue
                    except OSError as exc:
                        if exc.errno != _errno.EINVAL:
                            raise
                        os.close(self._direct)  # an alignment it refuses: the fallback
                        self._direct = -1
                out.append(_pread_dropped(self._fd, size, offset))
            except OSError as exc:
                out.append(exc)
        return out

    async def pread(self, size: int, offset: int) -> bytes:
        """`size` bytes at `offset`, in a worker thread."""
        return await trio.to_thread.run_sync(os.pread, self._fd, size, offset)

    def pread_cached(self, size: int, offset: int) -> bytes | None:
        """The bytes if the page cache holds them all (RWF_NOWAIT), else None; never raises."""
        buf = bytearray(size)
        try:
            n = os.preadv(self._fd, [buf], offset, os.RWF_NOWAIT)
        except (OSError, ValueError):  # EAGAIN (not cached), EOPNOTSUPP, closed, a real error
            return None
        return bytes(buf) if n == size else None

    async def preadv(self, reads: Sequence[tuple[int, int]]) -> list[bytes | OSError]:
        """Each (size, offset) read, in one worker thread trip."""
        fd = self._fd

        def run() -> list[bytes | OSError]:
            out: list[bytes | OSError] = []
            for size, offset in reads:
                try:
                    out.append(os.pread(fd, size, offset))
                except OSError as exc:
                    out.append(exc)
            return out

        got = await in_worker(run)
        out = list(got)
        got.clear()  # the worker thread keeps its last result until its next job
        return out

    async def pwritev(self, writes: Sequence[tuple[int, bytes]]) -> None:
        """Each (offset, data) written whole, in one worker thread trip (adjacent ones in
        one system call)."""
        fd = self._fd

        await in_worker(lambda: _pwrite_gathered(fd, writes))

    async def pread_media(self, reads: Sequence[tuple[int, int]]) -> list[bytes | OSError]:
        """Each (size, offset) read from the device (`_read_media`), in one worker thread
        trip."""
        got = await in_worker(lambda: self._read_media(reads))
        out = list(got)
        got.clear()  # the worker thread keeps its last result until its next job
        return out

    async def pwritev_sync(
        self, writes: Sequence[tuple[int, bytes]], back: Sequence[tuple[int, int]] = ()
    ) -> list[bytes | OSError]:
        """`pwritev`, `sync`, then `pread_media(back)`, in one worker thread trip
        (`pager.disk.write_and_sync`): a disk phase pays one thread hand-off, not three."""
        fd = self._fd

        def run() -> list[bytes | OSError]:
            _pwrite_gathered(fd, writes)
            os.fdatasync(fd)
            return self._read_media(back) if back else []

        got = await in_worker(run)
        out = list(got)
        got.clear()
        return out

    async def sync(self) -> None:
        """fdatasync, in a worker thread."""
        fd = self._fd
        await in_worker(lambda: os.fdatasync(fd))

    async def truncate(self, size: int) -> None:
        """ftruncate, in a worker thread."""
        await trio.to_thread.run_sync(os.ftruncate, self._fd, size)

    async def size(self) -> int:
        """The file's size (fstat; no disk access: on the event loop)."""
        return os.fstat(self._fd).st_size

    async def close(self) -> None:
        """Close the descriptor (unsynced writes stay with the kernel)."""
        if self._direct is not None and self._direct >= 0:
            direct, self._direct = self._direct, -1
            os.close(direct)
        self._direct_buf.close()
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class RealDiskLock:
    """The flock held on ``<root>/lock``; released by closing its descriptor."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def release(self) -> None:
        """Give the lock back (closing the descriptor drops the flock)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class RealDisk:
    """The state directory `root` as a `Disk`; created if missing."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, name: str = "") -> Path:
        """The real path of `name` (for tools and tests, never for the store's I/O)."""
        if name.startswith("/") or ".." in name.split("/"):
            raise OSError(_errno.EINVAL, f"{name!r} is not a name inside the disk")
        return self.root / name if name else self.root

    async def open(self, name: str, *, create: bool = False) -> RealDiskFile:
        """Open `name` read-write (created empty if `create`)."""
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        path = self.path(name)
        if create:
            await self.mkdir("")
        fd = await trio.to_thread.run_sync(os.open, path, flags, 0o600)
        return RealDiskFile(name, fd)

    async def exists(self, name: str) -> bool:
        """True if `name` exists."""
        return await trio.to_thread.run_sync(os.path.lexists, self.path(name))

    async def listdir(self, name: str = "") -> list[str]:
        """The sorted entries of directory `name` (empty if the root does not exist yet)."""
        path = self.path(name)
        try:
            return sorted(await trio.to_thread.run_sync(os.listdir, path))
        except FileNotFoundError:
            if name:
                raise
            return []

    async def mkdir(self, name: str) -> None:
        """Create directory `name` and its parents (no error if it exists)."""
        await trio.to_thread.run_sync(lambda: os.makedirs(self.path(name), exist_ok=True))

    async def rename(self, src: str, dst: str) -> None:
        """os.rename, atomic, replacing a file `dst`."""
        await trio.to_thread.run_sync(os.rename, self.path(src), self.path(dst))

    async def remove(self, name: str) -> None:
        """os.unlink."""
        await trio.to_thread.run_sync(os.unlink, self.path(name))

    async def sync_dir(self, name: str = "") -> None:
        """fsync the directory: its creates, renames and removes are durable."""
        path = self.path(name)

        def run() -> None:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        await trio.to_thread.run_sync(run)

    async def lock(self, wait: float) -> RealDiskLock:
        """flock ``lock`` exclusively, polling with trio sleeps for at most `wait` seconds;
        BlockingIOError when the holder kept it that long."""
        await self.mkdir("")
        path = self.path(LOCK_NAME)
        fd = await trio.to_thread.run_sync(
            os.open, path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        deadline = trio.current_time() + wait
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # never blocks
                    return RealDiskLock(fd)
                except BlockingIOError:
                    left = deadline - trio.current_time()
                    if left <= 0:
                        raise BlockingIOError(
                            _errno.EWOULDBLOCK, f"{path} is locked (waited {wait:g} s)"
                        ) from None
                    # Only a second pager on one store waits here.
                    await trio.sleep(min(LOCK_POLL, left))
        except BaseException:
            os.close(fd)
            raise
