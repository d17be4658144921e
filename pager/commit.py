"""The pager's only door to the store's disk: opening, slot reads, group commit, freeing.

Every store operation that touches the disk is here, and nowhere else in the pager; the
other modules use the store's in-memory side only (its `rows`, slot reservations). A disk
phase (`Committer.persist`, one `PageStore.persist`) keeps the order that makes a crash
anywhere safe: the batches' slots and the header records naming them are written together
with the free records of paged-in copies, then synced once (the sync is the commit; a
record is never trusted without its slot's checksum); only then is a batch evicted. The
store is async over its `Disk` (whose blocking calls run in worker threads); every crash
point is hit on the event loop.
"""

from __future__ import annotations

import errno as _errno
import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import structlog
import trio

from .config import PagerError, PagerStats
from .disk import Disk
from .faults import NO_FAULTS, CrashPoint, Faults
from .rowindex import Row
from .state import PagerState
from .store import PageStore, StoreError
from .store_faults import faulty_disk

log = structlog.get_logger("pager")

#: Seconds after an ENOSPC before the pages file may try to grow again.
FULL_RETRY: Final = 10.0

#: Seconds the freer holds rows to delete before committing their deletion itself: every
#: page-out's disk phase that starts meanwhile writes their free records with its own
#: (at the target with a reserve, one every half reserve of faults), which saves the
#: freer's write, sync and `O_DIRECT` read-back. At 2 ms the freer ran a phase of its own
#: every few page-ins under a stream of faults (strace: 0.16 fdatasync a page-in with 1
#: vCPU, its thread waking 3.5-4.3 times a page-in); at 1 s, page-ins/s with 4 vCPUs rose
#: 18-49% (six of six alternated bench runs) and with 16 vCPUs in five of six, populate's
#: p50 and p99 within the noise (at 50 ms a phase landed inside 1 in 16 of the bench's
#: spaced samples: p99 4.4-5.0x the echo; at 1 s, 1 in 300). BENCHMARKS.md, "Fifteenth
#: round". A delay here only delays a slot's reuse (a full pages file commits at once:
#: `urge_frees`) and a crash meanwhile leaves stale rows, freed at reconcile; deleting a
#: row needs no sync to be safe (tests/pager/test_pager_store_power.py).
FREE_WAIT: Final = 1.0


async def open_store(disk: Disk, *, faults: Faults = NO_FAULTS, lock_timeout: float) -> PageStore:
    """Lock and open the store on `disk` (`RealDisk(state_dir)` in production, the
    simulator's disk in a simulation), waiting at most `lock_timeout` s for the lock;
    PagerError (one line) if it cannot be. The disk is wrapped in the store-fault layer
    when `faults` names store faults."""
    try:
        return await PageStore.open(faulty_disk(disk, faults), lock_wait=lock_timeout)
    except StoreError as exc:
        raise PagerError(str(exc)) from None


async def bind_instance(store: PageStore, instance: str) -> str:
    """Bind the store to hv's instance (a new one sets the old pages aside); the outcome.
    PagerError (one line naming the file) if the disk fails meanwhile, as `open_store`:
    the pager cannot start, and a restart starts over from what is durable."""
    try:
        return await store.bind_instance(instance)
    except StoreError as exc:
        raise PagerError(str(exc)) from None


async def close_store(store: PageStore, *, crashed: bool) -> None:
    """Close the store at the end of a run (shielded from cancellation); after a crash
    only drop its descriptors, as the kernel does for a dead process."""
    if crashed:
        await store.abandon()
    else:
        await store.close()


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
        self._urge = trio.Event()  # set: the freer commits what it holds at once
        self._last_store_error: StoreError | None = None
        self._full_since: float | None = None

    # -- reads ------------------------------------------------------------------------

    def read_cached(self, rows: Sequence[Row]) -> list[bytes | StoreError] | None:
        """The rows' verified slots if all are in the page cache (never blocks), else None."""
        return self.store.read_slots_cached(rows)

    async def read(self, rows: Sequence[Row]) -> list[bytes | StoreError]:
        """Read and verify the rows' slots: each one's bytes, or its error."""
        # Slots in the page cache need no worker thread (a thread trip costs more than the
        # read); anything that would block on the disk goes to the disk's worker thread.
        cached = self.store.read_slots_cached(rows)
        if cached is not None:
            self.stats.cached_reads += len(rows)
            return cached
        self.stats.disk_reads += len(rows)
        self.store.pin(rows)
        try:
            return await self.store.read_slots(rows)
        finally:
            self.store.unpin(rows)

    # -- freeing rows -----------------------------------------------------------------

    async def free_rows(self, keys: Iterable[tuple[int, int]]) -> None:
        """Durably delete rows by (gfn, gen); a failure leaves them for the next reconcile."""
        todo = self.store.to_delete(keys)
        if not todo:
            return
        try:
            await self.store.delete_rows(todo)  # the store's index changes once it is durable
        except StoreError as exc:
            self.stats.store_errors += 1
            log.warning("store.free_failed", rows=len(todo), error=str(exc))

    def queue_free(self, keys: list[tuple[int, int]]) -> None:
        """Hand rows whose copy a prep loaded (answered 0) to the freer."""
        for key in keys:
            self.pending_free.add(key)
            self._free_send.send_nowait(key)

    async def freer(self) -> None:
        """Delete rows of paged-in copies in groups: one commit for many keys. The keys
        wait FREE_WAIT (or until `urge_frees`) in `free_later`, where every disk phase
        that starts takes them into its own commit (`_committer`); the freer commits only
        what is left."""
        async for key in self._free_recv:
            self.free_later.append(key)
            self._take_free_keys()
            self.state.notify()
            with trio.move_on_after(FREE_WAIT):
                await self._urge.wait()
            self._urge = trio.Event()
            self._take_free_keys()
            if self.group_running or not self.free_later:
                continue  # taken by a disk phase, or the running one's loop takes them
            keys, self.free_later = self.free_later, []
            try:
                await self.free_rows(keys)
            finally:
                self.pending_free.difference_update(keys)
            self.state.notify()

    def urge_frees(self) -> None:
        """Have the freer commit the rows it holds now, not after FREE_WAIT: a full pages
        file needs their slots."""
        if self.pending_free:
            self._urge.set()

    def _take_free_keys(self) -> None:
        while True:
            try:
                self.free_later.append(self._free_recv.receive_nowait())
            except trio.WouldBlock:
                return

    # -- group commit -----------------------------------------------------------------

    async def persist(self, batch: Batch) -> None:
        """Make `batch` durable: its slots and the records naming them written, then synced
        (the store's `rows` then hold its rows).

        Group commit: batches that become ready while a disk phase runs wait for the next
        one, which writes all of them in one `pwritev` and syncs the pages file once
        (`_committer`). StoreError if the shared write or sync failed (then no record of
        this batch is trusted and the store's `rows` are unchanged)."""
        entry = _GroupEntry(batch)
        self.group.append(entry)
        self.state.notify()
        if not self.group_running:
            self.group_running = True
            self.state.start_soon(self._committer)
        await entry.done.wait()
        if entry.error is not None:
            raise entry.error

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
                if deletes and not deleted:  # the phase failed: left for the next reconcile
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
        """One disk phase (`PageStore.persist`): every batch's slots and records and the
        free records of `deletes` (rows of paged-in copies) in one write, then one sync.
        True if it was synced (the store's index then holds it); on a StoreError every
        batch of the group gets it. `after_write` fires between the write and the sync,
        `after_fsync` after the sync, both on the event loop."""
        if not group and not deletes:
            return False
        rows = [r for e in group for r in e.batch.rows]
        pages = [p for e in group for p in e.batch.pages]
        # The write and the sync go in one call (one worker thread trip) unless the crash
        # point between them is armed.
        written = None
        if group and self.faults.arms(CrashPoint.after_write):
            written = functools.partial(self.faults.hit, CrashPoint.after_write)
        try:
            await self.store.persist(rows, pages, deletes, written=written)
        except StoreError as exc:
            for e in group:
                e.error = exc
            return False
        if group:
            self.faults.hit(CrashPoint.after_fsync)
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


__all__ = ["Batch", "Committer", "bind_instance", "close_store", "open_store"]
