"""The pager's only door to the store's disk: opening, slot reads, group commit, freeing.

Every store operation that touches the disk is here, and nowhere else in the pager; the
other modules use the store's in-memory side only (its `rows`, slot reservations). A disk
phase (`Committer.persist`) keeps the order that makes a crash anywhere safe: a batch's
slots are written, then synced, then the rows naming them committed, in one transaction
with the deletion of rows of paged-in copies; only then is the batch evicted. Blocking
store calls run in worker threads; every crash point is hit on the event loop, between
them.
"""

from __future__ import annotations

import errno as _errno
import functools
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import structlog
import trio

from .config import PagerError, PagerStats
from .faults import NO_FAULTS, CrashPoint, Faults
from .rowindex import Row
from .state import PagerState
from .store import DiskIO, PageStore, StoreError, disk_io_for

log = structlog.get_logger("pager")

#: Seconds after an ENOSPC before the pages file may try to grow again.
FULL_RETRY: Final = 10.0

#: Seconds the freer holds rows to delete before committing their deletion itself: a
#: page-out's disk phase that starts meanwhile deletes them in its own transaction, which
#: saves the freer's commit and its sync (a guest at its target pages one gfn out per
#: fault, so one is usually about to start). A delay here only delays a slot's reuse.
FREE_WAIT: Final = 0.002


async def open_store(
    state_dir: str | os.PathLike[str],
    *,
    faults: Faults = NO_FAULTS,
    io: DiskIO | None = None,
    lock_timeout: float,
) -> PageStore:
    """Lock and open the store in `state_dir`; PagerError (one line) if it cannot be.
    `io` replaces the store's disk layer (default: plain, or faulty when `faults` names
    store faults)."""
    opener = functools.partial(
        PageStore.open,
        state_dir,
        io=io if io is not None else disk_io_for(faults),
        lock_timeout=lock_timeout,
    )
    try:
        return await trio.to_thread.run_sync(opener)
    except StoreError as exc:
        raise PagerError(str(exc)) from None


async def bind_instance(store: PageStore, instance: str) -> str:
    """Bind the store to hv's instance (a new one sets the old pages aside); the outcome."""
    return await trio.to_thread.run_sync(store.bind_instance, instance)


def close_store(store: PageStore, *, crashed: bool) -> None:
    """Close the store at the end of a run; after a crash only drop its descriptors, as
    the kernel does for a dead process."""
    if crashed:
        store.abandon()
    else:
        store.close()


@dataclass(slots=True)
class Batch:
    """A page-out batch between its map and its evict."""

    gfns: list[int]
    slots: list[int]
    pages: list[bytes]
    rows: list[Row]
    nominated: bool


class _GroupEntry:
    """A page-out batch waiting for (or in) a group commit."""

    __slots__ = ("batch", "done", "error")

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.done = trio.Event()
        self.error: StoreError | None = None


class Committer:
    """Reads, group commits and row deletions of one pager run's store."""

    def __init__(
        self, store: PageStore, state: PagerState, stats: PagerStats, faults: Faults
    ) -> None:
        self.store = store
        self.state = state
        self.stats = stats
        self.faults = faults
        self.group: list[_GroupEntry] = []  # batches waiting for the next disk phase
        self.group_running = False
        self.free_later: list[tuple[int, int]] = []  # rows for the next phase to delete
        self.pending_free: set[tuple[int, int]] = set()  # (gfn, gen) queued to the freer
        self._free_send, self._free_recv = trio.open_memory_channel[tuple[int, int]](math.inf)
        self._last_store_error: StoreError | None = None
        self._full_since: float | None = None

    # -- reads ------------------------------------------------------------------------

    def read_cached(self, rows: Sequence[Row]) -> list[bytes | StoreError] | None:
        """The rows' verified slots if all are in the page cache (never blocks), else None."""
        return self.store.read_slots_cached(rows)

    async def read(self, rows: Sequence[Row]) -> list[bytes | StoreError]:
        """Read and verify the rows' slots: each one's bytes, or its error."""
        # Slots in the page cache need no worker thread (a thread trip costs more than the
        # read); anything that would block on the disk goes to the thread as before.
        cached = self.store.read_slots_cached(rows)
        if cached is not None:
            self.stats.cached_reads += len(rows)
            return cached
        self.stats.disk_reads += len(rows)
        self.store.pin(rows)
        try:
            return await trio.to_thread.run_sync(self.store.read_slots, rows)
        finally:
            self.store.unpin(rows)

    # -- freeing rows -----------------------------------------------------------------

    async def free_rows(self, keys: Iterable[tuple[int, int]]) -> None:
        """Durably delete rows by (gfn, gen); a failure leaves them for the next reconcile."""
        todo = self.store.to_delete(keys)
        if not todo:
            return
        try:
            await trio.to_thread.run_sync(self.store.delete_rows_sync, todo)
        except StoreError as exc:
            self.stats.store_errors += 1
            log.warning("store.free_failed", rows=len(todo), error=str(exc))
            return
        self.store.applied_delete(todo)

    def queue_free(self, keys: list[tuple[int, int]]) -> None:
        """Hand rows whose copy a prep loaded (answered 0) to the freer."""
        for key in keys:
            self.pending_free.add(key)
            self._free_send.send_nowait(key)

    async def freer(self) -> None:
        """Delete rows of paged-in copies in groups: one commit for many keys. The keys
        wait FREE_WAIT in `free_later`, where every disk phase that starts takes them into
        its own commit (`_committer`); the freer commits only what is left."""
        async for key in self._free_recv:
            self.free_later.append(key)
            self._take_free_keys()
            self.state.notify()
            await trio.sleep(FREE_WAIT)
            self._take_free_keys()
            if self.group_running or not self.free_later:
                continue  # taken by a disk phase, or the running one's loop takes them
            keys, self.free_later = self.free_later, []
            try:
                await self.free_rows(keys)
            finally:
                self.pending_free.difference_update(keys)
            self.state.notify()

    def _take_free_keys(self) -> None:
        while True:
            try:
                self.free_later.append(self._free_recv.receive_nowait())
            except trio.WouldBlock:
                return

    # -- group commit -----------------------------------------------------------------

    async def persist(self, batch: Batch) -> None:
        """Make `batch` durable: slots written, synced, then the rows naming them committed
        (and mirrored in `store.rows`).

        Group commit: batches that become ready while a disk phase runs wait for the next
        one, which writes all of them, syncs the pages file once and commits all their rows
        in one transaction (`_committer`). StoreError if this batch's write, or the shared
        sync or commit, failed (then none of this batch's rows is committed)."""
        entry = _GroupEntry(batch)
        self.group.append(entry)
        self.state.notify()
        if not self.group_running:
            self.group_running = True
            self.state.start_soon(self._committer)
        await entry.done.wait()
        if entry.error is not None:
            raise entry.error
        self.store.applied_commit(batch.rows)

    async def _committer(self) -> None:
        """Run disk phases while batches wait for one (or rows the freer handed over)."""
        try:
            while self.group or self.free_later:
                group, self.group = self.group, []
                keys, self.free_later = self.free_later, []
                deletes = self.store.to_delete(keys)
                try:
                    deleted = await self.persist_group(group, deletes)
                except BaseException:
                    for e in group:  # no batch of a failed phase may be evicted
                        if e.error is None:
                            e.error = StoreError("disk phase failed", _errno.EIO)
                    raise
                finally:
                    for e in group:
                        e.done.set()
                    self.pending_free.difference_update(keys)
                if deleted:
                    self.store.applied_delete(deletes)
                elif deletes:  # the commit failed: left for the next reconcile
                    self.stats.store_errors += 1
                    log.warning("store.free_failed", rows=len(deletes))
                if keys:
                    self.state.notify()
        finally:
            self.group_running = False
            for e in self.group:  # only if cut short: they must not wait for ever
                e.error = StoreError("disk phase abandoned", _errno.EIO)
                e.done.set()
            self.group = []
            self.pending_free.difference_update(self.free_later)
            self.free_later = []

    async def persist_group(
        self, group: list[_GroupEntry], deletes: Sequence[tuple[int, int]] = ()
    ) -> bool:
        """One disk phase, in the order that makes a crash anywhere safe: slots written,
        synced, then the rows naming them committed, in one transaction with the deletion
        of `deletes` (rows of paged-in copies). True if that transaction committed. Each
        step runs in a worker thread; the crash points between them fire here, on the
        event loop."""
        store = self.store
        written = await trio.to_thread.run_sync(_write_group, store, group)
        try:
            if written:
                self.faults.hit(CrashPoint.after_write)
                await trio.to_thread.run_sync(store.sync_slots)
                self.faults.hit(CrashPoint.after_fsync)
            elif not deletes:
                return False
            rows = [r for e in written for r in e.batch.rows]
            await trio.to_thread.run_sync(store.commit_rows_sync, rows, deletes)
        except StoreError as exc:
            for e in written:
                e.error = exc
            return False
        return True

    # -- a full or failing disk -------------------------------------------------------

    def full(self) -> bool:
        """Whether the pages file met ENOSPC less than FULL_RETRY s ago."""
        if self._full_since is None:
            return False
        if trio.current_time() - self._full_since >= FULL_RETRY:
            self._full_since = None  # try growing the pages file again
            return False
        return True

    def store_failed(self, exc: StoreError) -> None:
        """Count and log a failed disk phase (once per phase: its batches share the error)."""
        if exc is self._last_store_error:
            return
        self._last_store_error = exc
        if exc.full:
            self.stats.store_full += 1
            if self._full_since is None:
                log.warning(
                    "store.full",
                    error=str(exc),
                    msg="paging out stops; page-ins go on; nothing paged out is lost",
                )
            self._full_since = trio.current_time()
        else:
            self.stats.store_errors += 1
            log.error("store.write_failed", error=str(exc), errno=_errno.errorcode.get(exc.errno))


def _write_group(store: PageStore, group: list[_GroupEntry]) -> list[_GroupEntry]:
    # In a worker thread: write every batch's slots (no sync); the entries written. A
    # failed write is that batch's error; the others go on.
    written = []
    for e in group:
        try:
            store.write_slots(e.batch.slots, e.batch.pages)
        except StoreError as exc:
            e.error = exc
        else:
            written.append(e)
    return written


__all__ = ["Batch", "Committer", "bind_instance", "close_store", "open_store"]
