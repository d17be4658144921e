"""The paging store: one self-describing pages file on a `Disk`, one sync per page-out batch.

Layout of the store's `Disk` (the state directory in production, pager/realdisk.py)::

    lock            the disk's exclusive lock: the one pager that owns the store
    pages.xp        extents of a header page (128 checksummed records) and 128 data
                    slots; the format is pager/store_format.py's
    meta.json       {"format": 2, "instance": ..., "next_gen": ...}, replaced whole
                    (temporary file, sync, rename, directory sync)
    aside-*/        stores of another hv instance, set aside (never mixed in)

A store of the previous format (pages.bin + index.sqlite) is migrated on open
(pager/migrate.py).

Store rules (DESIGN.md "pager"), each closing a real way to lose a page:

- a page-out batch writes its data slots and the header pages of their extents in one
  `pwritev`, then syncs once (`persist`): a record naming a slot is durable no earlier
  than the slot's data; a torn or lost write fails a record's or a slot's crc and is never
  served;
- a row is identified by (gfn, gen), never by slot, because slots are reused; two records
  for one gfn: the higher generation wins, the other slot is free;
- a slot returns to the free list only once the record that freed it (a free record, or
  the durable record of a newer generation) is durable, and only when no reader has it
  pinned;
- one disk phase at a time (`_phase`): a header page says what the in-memory index says,
  which changes only after the phase's sync returned: it is read back when it carries the
  crc of the page the last synced phase (or the open) found there, never a failed phase's
  page, and rebuilt from the index otherwise (pager/store_headers.py);
- a phase's header pages are read back from the media once its sync returned
  (`DiskFile.pread_media`: past the page cache, with O_DIRECT in production; about one
  device read of 4 KiB per header page, 0.1-0.2 ms here), and a page that does not
  read back as written fails the phase as a failed sync does: StoreError, the index
  unchanged (the batch is not evicted, the free not applied). It closes wrong bytes after
  lost or misdirected header writes: were the writes of an extent's header page lost
  that free gfn G's old record and name G's new copy (one write when the free rides G's
  next page-out, two when it went in a phase of its own), the syncs would return, and
  recovery would find the old page's record of G naming a slot that still holds G's
  old bytes, crc and all: the guest would be served an older generation. With the
  read-back, each header page a phase relies on was seen on the media, so the page
  recovery reads is the last phase's (or a damaged one: EIO, honest);
- a phase's write, its sync and its read-back are one `write_and_sync` call (one worker
  thread trip) unless the crash point between the write and the sync is armed;
- one process per store (the disk's lock, waited for with a bound);
- the store records the hv `instance` (meta.json, and a tag in every record, so that a
  lost meta.json loses nothing); a store of another instance is set aside.

What no disk-only scheme closes: a header page that read back correct and is lost later
(a drive that answers the read-back from a volatile cache, then drops the write, or
reverts the sector). Recovery would then again find an older record whose slot's crc
matches. Only hv can tell: it would have to remember the generation of each evicted copy
and the pager check a record's generation against it at recovery, a protocol change
(PROTOCOL.md), not made here.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Callable, Iterable, Sequence
from typing import Final

import structlog
import trio

from .disk import Disk, DiskFile, DiskLock, held, join_runs, write_and_sync
from .migrate import migrate_if_needed
from .rowindex import Row, RowIndex
from .store_errors import ChecksumError, StoreError, StoreLocked, oserror
from .store_format import (
    EXTENT_SLOTS,
    SLOT_SIZE,
    checksum,
    header_offset,
    instance_tag,
    slot_offset,
    slot_offsets,
    slot_runs,
)
from .store_headers import HeaderPages, check_landed
from .store_open import (
    FORMAT,
    load_pages,
    move_aside,
    read_meta,
    write_meta,
)
from .store_slots import SlotTable

log = structlog.get_logger("pager.store")

#: The store's files on its disk.
PAGES: Final = "pages.xp"
META: Final = "meta.json"


class PageStore:
    """One disk's pages file, owned by one process (see module doc). Open with `open`."""

    def __init__(self, disk: Disk, lock: DiskLock) -> None:
        self.disk = disk
        self._lock = lock
        self._file: DiskFile | None = None
        self._phase = trio.Lock()  # one write+sync phase at a time
        #: gfn -> its durable row (changed only after a phase's sync returned).
        self.rows = RowIndex()
        self.instance: str | None = None
        self._meta_ok = False  # meta.json holds `instance` and a sane next_gen
        self._tag = 0
        self._tags: set[int] = set()  # instance tags of the records found at open
        self._next_gen = 1
        self.slots = SlotTable()  # which slots rows name, which are free or pinned
        self._headers = HeaderPages()  # the header pages a phase writes
        self.lost_records = 0  # records found damaged at open (their gfns are lost)
        self.closed = False

    # -- opening, closing -------------------------------------------------------------

    @classmethod
    async def open(cls, disk: Disk, *, lock_wait: float) -> PageStore:
        """Lock `disk` (waiting at most `lock_wait` s of trio time) and open its store,
        migrating a store of the previous format first."""
        try:
            lock = await disk.lock(lock_wait)
        except BlockingIOError:
            raise StoreLocked(
                f"the store is locked by another pager (waited {lock_wait:g} s); "
                "kill a hung predecessor first",
                _errno.EBUSY,
            ) from None
        except OSError as exc:
            raise oserror("taking the store's lock", exc) from exc
        store = cls(disk, lock)
        try:
            await migrate_if_needed(disk, PAGES, META)
            await store._load()
        except BaseException:
            await store.abandon()
            raise
        return store

    async def _load(self) -> None:
        meta = await read_meta(self.disk, META)
        self.instance = meta.get("instance")
        try:
            existed = await self.disk.exists(PAGES)
            self._file = await self.disk.open(PAGES, create=True)
            if not existed:
                await self.disk.sync_dir()  # the file's name outlives a power loss too
            got = await load_pages(self._file)
        except OSError as exc:
            raise oserror("opening the pages file", exc) from exc
        self.rows, self._tags = got.rows, got.tags
        self.slots = SlotTable(got.used, got.free, got.high)
        self._headers = HeaderPages(got.sealed)
        self.lost_records = got.lost_records
        self._next_gen = max(int(meta.get("next_gen", 1)), got.max_gen + 1)
        self._meta_ok = meta.get("format") == FORMAT and "instance" in meta
        if got.unreadable:  # before anything else is written (HeaderPages.clear)
            await self._headers.clear(
                self._file, got.unreadable, self.rows, self.slots.used, self._tag
            )

    async def abandon(self) -> None:
        """Drop the files and the lock without syncing anything: what the kernel does to a
        dead process (in-process crash simulation)."""
        await self.close()

    async def close(self) -> None:
        """Close the store (everything persisted is already durable)."""
        if self.closed:
            return
        self.closed = True
        with trio.CancelScope(shield=True):
            if self._file is not None:
                try:
                    await self._file.close()
                except OSError as exc:
                    log.warning("store.close_failed", error=str(exc))
            await self._lock.release()

    # -- instance ---------------------------------------------------------------------

    async def bind_instance(self, instance: str) -> str:
        """Tie the store to hv domain `instance`: "same", "new" or "set_aside".

        A store written for another instance holds pages of a memory that no longer
        exists: its files move to ``aside-<old instance>-<n>/`` and a fresh store begins.
        Without meta.json (lost or damaged), the records' instance tags decide.
        """
        tag = instance_tag(instance)
        known = self.instance
        if known is None and not self._meta_ok and self._tags == {tag}:
            known = instance  # meta.json lost: every record says it is this instance's
        outcome = "same"
        if known != instance:
            outcome = "new"
            if self.rows:
                outcome = "set_aside"
                aside = await self._replace_files(self.instance or "unknown")
                log.warning(
                    "store.set_aside",
                    old_instance=self.instance,
                    new_instance=instance,
                    rows=len(self.rows),
                    aside=aside,
                )
            elif self.instance is not None or self.slots.high:
                # An empty store of another instance holds no page: nothing to keep.
                await self._replace_files(None)
                log.info("store.reset_empty", old_instance=self.instance, new_instance=instance)
        self.instance = instance
        if not self._tags <= {tag}:  # header pages kept or read back carry another tag
            self._headers.forget()
        self._tag = tag
        if outcome != "same" or not self._meta_ok:
            try:
                await write_meta(self.disk, META, self.instance, self._next_gen)
                self._meta_ok = True
            except OSError as exc:
                raise oserror("writing meta.json", exc) from exc
        return outcome

    async def _replace_files(self, aside: str | None) -> str | None:
        """Close the pages file, move the store's files aside (or delete them), and open a
        fresh, empty store; the aside directory's name."""
        if self._file is not None:
            await self._file.close()
            self._file = None
        name = await move_aside(self.disk, (PAGES, META), aside)
        self._headers.forget()
        self.instance, self._meta_ok = None, False
        await self._load()
        return name

    # -- slots ------------------------------------------------------------------------

    def reserve(self, n: int, *, grow: bool = True) -> list[int]:
        """Take `n` slots for a page-out batch (`SlotTable.reserve`)."""
        return self.slots.reserve(n, grow=grow)

    def release(self, slots: Iterable[int]) -> None:
        """Give back reserved slots that no persisted record names (a failed batch)."""
        self.slots.release(slots)

    @property
    def free_slots(self) -> int:
        """Slots ready for reuse without growing the pages file."""
        return self.slots.free_count

    def next_gen(self) -> int:
        """A new generation number (rows are identified by (gfn, gen))."""
        gen = self._next_gen
        self._next_gen += 1
        return gen

    def next_gens(self, n: int) -> range:
        """`n` new generation numbers (`next_gen` `n` times)."""
        gens = range(self._next_gen, self._next_gen + n)
        self._next_gen += n
        return gens

    def pin(self, rows: Iterable[Row]) -> None:
        """Keep these rows' slots from reuse while they are being read."""
        self.slots.pin(rows)

    def unpin(self, rows: Iterable[Row]) -> None:
        """Release pins taken by `pin`."""
        self.slots.unpin(rows)

    def to_delete(self, keys: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """The (gfn, gen) keys that still name a row (a newer generation is kept)."""
        keys = list(keys)
        have = self.rows.gens_of([gfn for gfn, _ in keys])
        return [key for key, gen in zip(keys, have, strict=True) if gen == key[1]]

    # -- disk phases ------------------------------------------------------------------

    async def persist(
        self,
        rows: Sequence[Row],
        pages: Sequence[bytes],
        deletes: Sequence[tuple[int, int]] = (),
        *,
        written: Callable[[], None] | None = None,
    ) -> None:
        """Make `rows` (whose data is `pages`) durable and free the rows `deletes` names by
        (gfn, gen), in one disk phase: the data slots and the header pages of their extents
        in one `pwritev`, `written()` (a crash point), then one sync, then the header pages
        read back from the media (without `written`, the three in one `write_and_sync`
        call). Then, and only then, the in-memory index changes. StoreError (and no
        change) if the phase failed, a header page read back other bytes than written
        included, or if a row's slot is named by a row already (a bookkeeping bug:
        writing would lose that row's page)."""
        if twice := self.slots.unnameable([r.slot for r in rows]):
            raise StoreError(f"slots {twice[:8]} are named already, or no slots", _errno.EIO)
        async with held(self._phase):
            if self._file is None or self.closed:
                raise StoreError("the store is closed", _errno.EIO)
            deletes = self.to_delete(dict.fromkeys(deletes))  # a key named twice: once
            # slot -> its new record: a live row's, or None for a free one (the last word
            # on a slot wins; no slot of `rows` can be one of the slots freed here).
            overlay: dict[int, Row | None] = {}
            if deletes:
                gone = [gfn for gfn, _ in deletes]
                for gfn, slot in zip(gone, self.rows.slots_of(gone), strict=True):
                    if slot < 0:
                        raise KeyError(gfn)  # as the lookup of a row it would free
                    overlay[slot] = None
            for r, old in zip(rows, self.rows.slots_of([r.gfn for r in rows]), strict=True):
                if old >= 0 and old != r.slot:
                    overlay[old] = None  # the newer generation replaces it
                overlay[r.slot] = r
            if not overlay:
                return
            changes: dict[int, list[tuple[int, Row | None]]] = {}
            for slot, rec in overlay.items():
                changes.setdefault(slot // EXTENT_SLOTS, []).append((slot, rec))
            try:
                headers = await self._headers.pages(
                    self._file, changes, self.rows, self.slots.used, self._tag
                )
            except OSError as exc:
                raise oserror("header page read", exc) from exc
            # Sorted by offset, adjacent writes not joined: the disk gathers them (no copy).
            writes = list(zip(slot_offsets([r.slot for r in rows]), pages, strict=True))
            writes += [(header_offset(e), bytes(h)) for e, h in headers.items()]
            writes.sort(key=_offset)
            back = [(SLOT_SIZE, header_offset(e)) for e in headers]
            if written is None:  # write, sync, read-back in one call (one thread trip)
                try:
                    landed = await write_and_sync(self._file, writes, back)
                except OSError as exc:
                    raise oserror("slot write and sync", exc) from exc
            else:
                try:
                    await self._file.pwritev(join_runs(writes))
                except OSError as exc:
                    raise oserror("slot write", exc) from exc
                written()
                try:
                    await self._file.sync()
                except OSError as exc:
                    raise oserror("pages file sync", exc) from exc
                try:
                    landed = await self._file.pread_media(back)
                except OSError as exc:
                    raise oserror("header page read-back", exc) from exc
            check_landed(headers, landed)
            self._headers.synced(headers)
            self._applied(rows, deletes)

    async def delete_rows(self, keys: Sequence[tuple[int, int]]) -> None:
        """Durably free the rows `keys` names by (gfn, gen) (free records, one sync)."""
        await self.persist((), (), keys)

    def _applied(self, rows: Sequence[Row], deletes: Sequence[tuple[int, int]]) -> None:
        index, slots = self.rows, self.slots
        for slot in index.pop_slots([gfn for gfn, _ in deletes]):
            slots.freed(slot)
        for old in index.put_many(rows):  # an older generation in another slot
            slots.freed(old.slot)
        slots.name_many([r.slot for r in rows])

    # -- reads ------------------------------------------------------------------------

    async def read_slots(self, rows: Sequence[Row]) -> list[bytes | StoreError]:
        """Read and verify each row's slot (one `preadv`): its bytes, or the error. Pin the
        rows around the call if they may be freed meanwhile."""
        if self._file is None:
            return [StoreError("the store is closed") for _ in rows]
        got = await self._file.preadv([(SLOT_SIZE, slot_offset(r.slot)) for r in rows])
        out: list[bytes | StoreError] = []
        for r, data in zip(rows, got, strict=True):
            if isinstance(data, OSError):
                out.append(StoreError(f"gfn {r.gfn}: slot {r.slot} read failed: {data}"))
            else:
                out.append(_verified(r, data))
        return out

    def read_slots_cached(self, rows: Sequence[Row]) -> list[bytes | StoreError] | None:
        """`read_slots` when every slot is in the page cache (never blocks), else None."""
        if self._file is None:
            return None
        out: list[bytes | StoreError] = []
        read = self._file.pread_cached
        i = 0  # slots next to each other in the file (a batch's usually are): one read
        for start, count in slot_runs([r.slot for r in rows]):
            data = read(count * SLOT_SIZE, start)
            if data is None:
                return None
            if count == 1:
                out.append(_verified(rows[i], data))
            else:
                with memoryview(data) as view:
                    for k, r in enumerate(rows[i : i + count]):
                        out.append(_verified(r, bytes(view[k * SLOT_SIZE : (k + 1) * SLOT_SIZE])))
            i += count
        return out


def _offset(write: tuple[int, bytes]) -> int:
    return write[0]


def _verified(r: Row, data: bytes) -> bytes | StoreError:
    """The slot's bytes if they match the row's checksum, else a ChecksumError."""
    if len(data) != SLOT_SIZE or checksum(r.gfn, r.gen, data) != r.crc:
        return ChecksumError(f"gfn {r.gfn} gen {r.gen}: slot {r.slot} fails its checksum")
    return data


__all__ = ["ChecksumError", "PageStore", "Row", "StoreError", "StoreLocked", "checksum"]
