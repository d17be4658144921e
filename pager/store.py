"""The paging store: a pages file of 4 KiB slots and a crash-safe SQLite index.

Layout of ``--state-dir``::

    lock            flock'ed exclusively by the one pager that owns the store
    pages.bin       slot i holds 4096 bytes at offset i * 4096
    index.sqlite    WAL, synchronous=FULL: meta(key, value) and
                    pages(gfn PRIMARY KEY, gen, slot, crc)
    aside-*/        stores of another hv instance, set aside (never mixed in)

Store rules (DESIGN.md "pager"), each closing a real way to lose a page:

- a slot is written and fdatasync'ed before a row names it (`write_slots`, then `commit`);
- a row is identified by (gfn, gen), never by slot, because slots are reused: `free` of a
  (gfn, gen) that was replaced by a newer generation is a no-op;
- free slots are derived from the index at open (slots no row names); a slot returns to the
  free list only once the deletion or replacement of the row naming it is durable, and
  only when no reader has it pinned;
- the checksum covers (gfn, gen) as well as the data, so a slot holding another gfn's page
  (or an older generation) fails verification instead of being handed out;
- one process per store (`flock`, waited for with a bound);
- the store records the hv `instance`; a store of another instance is set aside.

Disk I/O goes through `DiskIO`, which tests (and ``--faults store.*``) replace to inject
ENOSPC, EIO and corrupted reads. The blocking methods here run in worker threads
(`trio.to_thread`); the in-memory index (`rows`, the free list) is changed only by the
caller's thread, after the disk operation returned.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import fcntl
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import crc32c
import structlog

from protocol import PAGE_SIZE

from .faults import NO_FAULTS, Faults, store_oserror
from .rowindex import Row, RowIndex

log = structlog.get_logger("pager.store")

#: Bytes per slot: one guest page.
SLOT_SIZE: Final = PAGE_SIZE

#: On-disk format of the index; bumped on an incompatible change.
FORMAT: Final = 1

#: Seconds between attempts to take the state directory's lock.
LOCK_POLL: Final = 0.05

_GEN_KEY = struct.Struct("<QQ")

_DELETE: Final = "DELETE FROM pages WHERE gfn = ? AND gen = ?"


class StoreError(Exception):
    """A store operation failed; `errno` says how (ENOSPC, EIO, ...)."""

    def __init__(self, msg: str, errno: int = _errno.EIO) -> None:
        super().__init__(msg)
        self.errno = errno

    @property
    def full(self) -> bool:
        """True when the disk is full (stop paging out, keep serving page-ins)."""
        return self.errno == _errno.ENOSPC


class StoreLocked(StoreError):
    """Another process holds the state directory's lock (a hung predecessor?)."""


class ChecksumError(StoreError):
    """A slot's bytes do not match the checksum its row recorded."""


def checksum(gfn: int, gen: int, data: bytes) -> int:
    """CRC32C of the page, seeded with (gfn, gen): a misplaced slot never verifies."""
    return crc32c.crc32c(data, crc32c.crc32c(_GEN_KEY.pack(gfn, gen)))


class DiskIO:
    """Plain disk operations; the seam where faults are injected."""

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        """Write all of `data` at `offset`."""
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """Read `size` bytes at `offset` (short reads past EOF come back short)."""
        return os.pread(fd, size, offset)

    def pread_cached(self, fd: int, size: int, offset: int) -> bytes | None:
        """`size` bytes at `offset` if the page cache holds them all, else None (never blocks
        on the disk: RWF_NOWAIT). A failure of any kind is None too: the blocking `pread`
        in a worker thread then reads, and reports, for real. A subclass that overrides
        `pread` (fault injection, tests counting reads) sees every read there: None."""
        if type(self).pread is not DiskIO.pread:
            return None
        buf = bytearray(size)
        try:
            n = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
        except OSError:  # EAGAIN (not cached), EOPNOTSUPP (file system), or a real error
            return None
        return bytes(buf) if n == size else None

    def fdatasync(self, fd: int) -> None:
        """Make written data durable."""
        os.fdatasync(fd)

    def before_commit(self) -> None:
        """Called before each index transaction commits (a fault may raise here)."""


class FaultyDiskIO(DiskIO):
    """DiskIO that consults a `Faults` spec before each operation."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        action = self.faults.store_fault("write")
        if action is not None:
            raise store_oserror(action, "store.write")
        super().pwrite(fd, data, offset)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        action = self.faults.store_fault("read")
        if action in ("ENOSPC", "EIO"):
            raise store_oserror(action, "store.read")
        data = super().pread(fd, size, offset)
        if action == "corrupt" and data:
            flipped = bytearray(data)
            flipped[len(flipped) // 2] ^= 0x5A
            data = bytes(flipped)
        return data

    def fdatasync(self, fd: int) -> None:
        action = self.faults.store_fault("fsync")
        if action is not None:
            raise store_oserror(action, "store.fsync")
        super().fdatasync(fd)

    def before_commit(self) -> None:
        action = self.faults.store_fault("commit")
        if action is not None:
            raise store_oserror(action, "store.commit")


def disk_io_for(faults: Faults) -> DiskIO:
    """The DiskIO for a fault spec: plain unless it names store faults."""
    return FaultyDiskIO(faults) if faults is not NO_FAULTS and faults._store else DiskIO()


class PageStore:
    """One state directory's pages file and index, owned by one process (see module doc)."""

    def __init__(self, state_dir: Path, io: DiskIO, lock_fd: int) -> None:
        self.state_dir = state_dir
        self.io = io
        self._lock_fd = lock_fd
        self._db_lock = threading.Lock()  # one index transaction at a time
        self._db: sqlite3.Connection | None = None
        self._fd = -1
        #: gfn -> its durable row (mirror of the index, changed only after a commit).
        self.rows = RowIndex()
        self.instance: str | None = None
        self._next_gen = 1
        self._free: list[int] = []  # slots no row names, none reserved
        self._high = 0  # slots below this exist (or existed) in the file
        self._pins: dict[int, int] = {}  # slot -> readers in flight
        self._unpin_free: set[int] = set()  # freed while pinned: free once unpinned
        self.closed = False
        self._open_files()

    # -- opening, closing -------------------------------------------------------------

    @classmethod
    def open(
        cls, state_dir: str | os.PathLike[str], *, io: DiskIO | None = None, lock_timeout: float
    ) -> PageStore:
        """Lock `state_dir` (waiting at most `lock_timeout` s) and open its store (blocking)."""
        path = Path(state_dir)
        path.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(lock_fd)
                    raise StoreLocked(
                        f"{path} is locked by another pager (waited {lock_timeout:g} s); "
                        "kill a hung predecessor first",
                        _errno.EBUSY,
                    ) from None
                # flock has no timeout: poll. Only a second pager on one store waits here.
                time.sleep(LOCK_POLL)
        try:
            return cls(path, io or DiskIO(), lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    def _open_files(self) -> None:
        self._fd = os.open(
            self.state_dir / "pages.bin", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        db = sqlite3.connect(
            self.state_dir / "index.sqlite", isolation_level=None, check_same_thread=False
        )
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value ANY) STRICT")
        db.execute(
            "CREATE TABLE IF NOT EXISTS pages (gfn INTEGER PRIMARY KEY, gen INTEGER NOT NULL,"
            " slot INTEGER NOT NULL, crc INTEGER NOT NULL) STRICT"
        )
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format", FORMAT) != FORMAT:
            raise StoreError(f"index format {meta['format']} is not {FORMAT}", _errno.EINVAL)
        self.instance = meta.get("instance")
        rows = list(map(Row._make, db.execute("SELECT gfn, gen, slot, crc FROM pages")))
        self.rows = RowIndex(rows)
        max_gen = max((r.gen for r in rows), default=0)
        self._next_gen = max(int(meta.get("next_gen", 1)), max_gen + 1)
        used = {r.slot for r in rows}
        if len(used) < len(rows):
            # Never written by this store: the check below refuses it before a commit.
            # Each copy's checksum covers (gfn, gen), so the wrong one fails verification.
            log.error("store.slot_named_twice", rows=len(rows), slots=len(used))
        self._named = bytearray(max(used, default=-1) + 1)  # 1: a durable row names it
        for slot in used:
            self._named[slot] = 1
        file_slots = os.fstat(self._fd).st_size // SLOT_SIZE
        self._high = max(file_slots, max(used, default=-1) + 1)
        # Free slots are derived from the index: every slot below the high-water mark that
        # no row names. A crash between write and commit leaves such slots: they are free.
        self._free = sorted(set(range(self._high)) - used, reverse=True)

    def abandon(self) -> None:
        """Drop every file descriptor without flushing or committing anything.

        What the kernel does to a SIGKILLed process: used by in-process crash simulation.
        """
        self._close_fds()

    def close(self) -> None:
        """Close the store cleanly (everything committed is already durable)."""
        self._close_fds()

    def _close_fds(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()  # an open transaction (there is none between calls) rolls back
        for fd in (self._fd, self._lock_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- instance ---------------------------------------------------------------------

    def bind_instance(self, instance: str) -> str:
        """Tie the store to hv domain `instance`: "same", "new" or "set_aside" (blocking).

        A store written for another instance holds pages of a memory that no longer
        exists: its files move to ``aside-<old instance>-<time>/`` and a fresh store begins.
        """
        if self.instance == instance:
            return "same"
        outcome = "new"
        if self.rows:
            outcome = "set_aside"
            aside = self.state_dir / f"aside-{_safe(self.instance)}-{time.time_ns()}"
            aside.mkdir()
            self._replace_files(aside)
            log.warning(
                "store.set_aside",
                old_instance=self.instance,
                new_instance=instance,
                rows=len(self.rows),
                aside=str(aside),
            )
        elif self.instance is not None:
            # An empty store of another instance holds no page: nothing to keep, and
            # setting it aside would leave a pages file behind on every hv restart.
            self._replace_files(None)
            log.info("store.reset_empty", old_instance=self.instance, new_instance=instance)
        with self._db_lock:
            self._execute_txn(
                [
                    ("INSERT OR REPLACE INTO meta VALUES ('instance', ?)", [(instance,)]),
                    ("INSERT OR REPLACE INTO meta VALUES ('format', ?)", [(FORMAT,)]),
                ]
            )
        self.instance = instance
        return outcome

    def _replace_files(self, aside: Path | None) -> None:
        """Close the store's files, move them to `aside` (or delete them), open fresh ones."""
        assert self._db is not None
        self._db.close()
        os.close(self._fd)
        for name in ("pages.bin", "index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
            with contextlib.suppress(FileNotFoundError):
                if aside is None:
                    os.unlink(self.state_dir / name)
                else:
                    os.rename(self.state_dir / name, aside / name)
        _fsync_dir(self.state_dir)
        self._open_files()

    # -- slots ------------------------------------------------------------------------

    def reserve(self, n: int, *, grow: bool = True) -> list[int]:
        """Take `n` slots for a page-out batch (fewer if `grow` is false and few are free)."""
        out: list[int] = []
        while self._free and len(out) < n:
            out.append(self._free.pop())
        if grow:
            while len(out) < n:
                out.append(self._high)
                self._high += 1
        return out

    def release(self, slots: Iterable[int]) -> None:
        """Give back reserved slots that no committed row names (a failed batch)."""
        self._free.extend(slots)

    @property
    def free_slots(self) -> int:
        """Slots ready for reuse without growing the pages file."""
        return len(self._free)

    def next_gen(self) -> int:
        """A new generation number (rows are identified by (gfn, gen))."""
        gen = self._next_gen
        self._next_gen += 1
        return gen

    def _slot_freed(self, slot: int) -> None:
        self._named[slot] = 0
        if slot in self._pins:
            self._unpin_free.add(slot)
        else:
            self._free.append(slot)

    def pin(self, rows: Iterable[Row]) -> None:
        """Keep these rows' slots from reuse while they are being read."""
        for r in rows:
            self._pins[r.slot] = self._pins.get(r.slot, 0) + 1

    def unpin(self, rows: Iterable[Row]) -> None:
        """Release pins taken by `pin`."""
        for r in rows:
            left = self._pins[r.slot] - 1
            if left:
                self._pins[r.slot] = left
                continue
            del self._pins[r.slot]
            if r.slot in self._unpin_free:
                self._unpin_free.discard(r.slot)
                self._free.append(r.slot)

    # -- blocking disk operations (run them in a worker thread) -------------------------

    def write_slots(self, slots: Sequence[int], pages: Sequence[bytes]) -> None:
        """Write each page to its slot (contiguous runs in one pwrite); no sync (blocking)."""
        order = sorted(range(len(slots)), key=slots.__getitem__)
        i = 0
        try:
            while i < len(order):
                j = i + 1
                while j < len(order) and slots[order[j]] == slots[order[j - 1]] + 1:
                    j += 1
                data = b"".join(pages[k] for k in order[i:j])
                self.io.pwrite(self._fd, data, slots[order[i]] * SLOT_SIZE)
                i = j
        except OSError as exc:
            raise StoreError(f"slot write failed: {exc}", exc.errno or _errno.EIO) from exc

    def sync_slots(self) -> None:
        """fdatasync the pages file: after it, every written slot is durable (blocking)."""
        try:
            self.io.fdatasync(self._fd)
        except OSError as exc:
            raise StoreError(f"fdatasync failed: {exc}", exc.errno or _errno.EIO) from exc

    def read_slots(self, rows: Sequence[Row]) -> list[bytes | StoreError]:
        """Read and verify each row's slot: its bytes, or the error (blocking)."""
        out: list[bytes | StoreError] = []
        for r in rows:
            try:
                data = self.io.pread(self._fd, SLOT_SIZE, r.slot * SLOT_SIZE)
            except OSError as exc:
                out.append(StoreError(f"gfn {r.gfn}: slot {r.slot} read failed: {exc}"))
                continue
            out.append(_verified(r, data))
        return out

    def read_slots_cached(self, rows: Sequence[Row]) -> list[bytes | StoreError] | None:
        """`read_slots` when every slot is in the page cache (never blocks), else None."""
        out: list[bytes | StoreError] = []
        for r in rows:
            data = self.io.pread_cached(self._fd, SLOT_SIZE, r.slot * SLOT_SIZE)
            if data is None:
                return None
            out.append(_verified(r, data))
        return out

    def commit_rows_sync(
        self, rows: Sequence[Row], deletes: Sequence[tuple[int, int]] = ()
    ) -> None:
        """Durably commit rows naming written, synced slots, and delete rows by (gfn, gen),
        in one transaction (blocking). StoreError, and nothing committed, if a slot is
        named by a durable row already (a bookkeeping bug: committing would lose that
        row's page)."""
        named, size = self._named, len(self._named)
        if twice := [r.slot for r in rows if r.slot < size and named[r.slot]]:
            raise StoreError(f"slots {twice[:8]} are named by a row already", _errno.EIO)
        statements = [(_DELETE, list(deletes))] if deletes else []
        if rows:
            statements += [
                (
                    "INSERT INTO pages VALUES (?, ?, ?, ?) ON CONFLICT(gfn) DO UPDATE SET"
                    " gen = excluded.gen, slot = excluded.slot, crc = excluded.crc",
                    [(r.gfn, r.gen, r.slot, r.crc) for r in rows],
                ),
                ("INSERT OR REPLACE INTO meta VALUES ('next_gen', ?)", [(self._next_gen,)]),
            ]
        with self._db_lock:
            self._execute_txn(statements)

    def delete_rows_sync(self, keys: Sequence[tuple[int, int]]) -> None:
        """Durably delete rows by (gfn, gen) (blocking)."""
        with self._db_lock:
            self._execute_txn([(_DELETE, list(keys))])

    def _execute_txn(self, statements: list[tuple[str, list[tuple[object, ...]]]]) -> None:
        assert self._db is not None
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    db.executemany(sql, params)
                self.io.before_commit()
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        except OSError as exc:
            raise StoreError(f"index commit failed: {exc}", exc.errno or _errno.EIO) from exc
        except sqlite3.Error as exc:
            code = _errno.ENOSPC if "full" in str(exc) else _errno.EIO
            raise StoreError(f"index commit failed: {exc}", code) from exc

    # -- in-memory bookkeeping after a durable commit ------------------------------------

    def applied_commit(self, rows: Sequence[Row]) -> None:
        """Mirror a commit in memory; slots of replaced rows become free."""
        named = self._named
        for r in rows:
            old = self.rows.get(r.gfn)
            self.rows[r.gfn] = r
            if r.slot >= len(named):
                named.extend(bytes(r.slot + 1 - len(named) + 1024))
            if old is not None and old.slot != r.slot:
                self._slot_freed(old.slot)
            named[r.slot] = 1

    def to_delete(self, keys: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """The (gfn, gen) keys that still name a row (a newer generation is kept)."""
        out = []
        for gfn, gen in keys:
            r = self.rows.get(gfn)
            if r is not None and r.gen == gen:
                out.append((gfn, gen))
        return out

    def applied_delete(self, keys: Iterable[tuple[int, int]]) -> None:
        """Mirror a deletion in memory; the slots become free (once unpinned)."""
        for gfn, gen in keys:
            r = self.rows.get(gfn)
            if r is not None and r.gen == gen:
                del self.rows[gfn]
                self._slot_freed(r.slot)


def _verified(r: Row, data: bytes) -> bytes | StoreError:
    """The slot's bytes if they match the row's checksum, else a ChecksumError."""
    if len(data) != SLOT_SIZE or checksum(r.gfn, r.gen, data) != r.crc:
        return ChecksumError(f"gfn {r.gfn} gen {r.gen}: slot {r.slot} fails its checksum")
    return data


def _safe(text: str | None) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in (text or "none"))[:64]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
