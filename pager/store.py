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
- one disk phase at a time (`_phase`): header pages are rebuilt from the in-memory index,
  which changes only after the phase's sync returned;
- one process per store (the disk's lock, waited for with a bound);
- the store records the hv `instance` (meta.json, and a tag in every record, so that a
  lost meta.json loses nothing); a store of another instance is set aside.
"""

from __future__ import annotations

import errno as _errno
import json
import operator
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from itertools import compress
from typing import Any, Final

import structlog
import trio

from .disk import Disk, DiskFile, DiskLock
from .migrate import migrate_if_needed
from .rowindex import Row, RowIndex, key_runs, scatter
from .store_format import (
    EXTENT_SLOTS,
    FREE_RECORD,
    SLOT_SIZE,
    Columns,
    checksum,
    encode,
    extents_in,
    header_offset,
    instance_tag,
    is_slot,
    parse_headers,
    seal,
    slot_offset,
    slots_in,
)

log = structlog.get_logger("pager.store")

#: The store's files on its disk.
PAGES: Final = "pages.xp"
META: Final = "meta.json"

#: Version of meta.json's format.
FORMAT: Final = 2

#: Header pages read per `preadv` at open (a few worker thread trips, few objects at once).
HEADER_READS: Final = 128

#: Header pages kept in memory for the extents written last (patched, not rebuilt).
HEADER_CACHE: Final = 16

#: gfns at or above this do not fit the slot -> gfn array (4 bytes): kept in a dict.
_BIG_GFN: Final = (1 << 32) - 1


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
    """Another process holds the store's lock (a hung predecessor?)."""


class ChecksumError(StoreError):
    """A slot's bytes do not match the checksum its record holds."""


def _oserror(what: str, exc: OSError) -> StoreError:
    return StoreError(f"{what} failed: {exc}", exc.errno or _errno.EIO)


class PageStore:
    """One disk's pages file, owned by one process (see module doc). Open with `open`."""

    def __init__(self, disk: Disk, lock: DiskLock) -> None:
        self.disk = disk
        self._lock = lock
        self._file: DiskFile | None = None
        self._phase = trio.Lock()  # one write+sync phase at a time
        #: gfn -> its durable row (changed only after a phase's sync returned).
        self.rows = RowIndex()
        self._slot_gfn = array("I")  # slot -> gfn + 1 of the row naming it, 0: none
        self._slot_big: dict[int, int] = {}  # slot -> gfn, for gfns >= _BIG_GFN
        self.instance: str | None = None
        self._meta_ok = False  # meta.json holds `instance` and a sane next_gen
        self._tag = 0
        self._tags: set[int] = set()  # instance tags of the records found at open
        self._next_gen = 1
        self._free = array("I")  # slots no row names, none reserved (popped from the end)
        self._high = 0  # slots below this exist (or existed) in the file
        self._pins: dict[int, int] = {}  # slot -> readers in flight
        self._unpin_free: set[int] = set()  # freed while pinned: free once unpinned
        self._headers: OrderedDict[int, bytearray] = OrderedDict()  # extent -> header page
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
            raise _oserror("taking the store's lock", exc) from exc
        store = cls(disk, lock)
        try:
            await migrate_if_needed(disk, PAGES, META)
            await store._load()
        except BaseException:
            await store.abandon()
            raise
        return store

    async def _load(self) -> None:
        meta = await self._read_meta()
        self.instance = meta.get("instance")
        try:
            existed = await self.disk.exists(PAGES)
            self._file = pages = await self.disk.open(PAGES, create=True)
            if not existed:
                await self.disk.sync_dir()  # the file's name outlives a power loss too
            size = await pages.size()
            n_ext = extents_in(size)
            headers: list[bytes | OSError] = []
            for start in range(0, n_ext, HEADER_READS):
                top = min(n_ext, start + HEADER_READS)
                headers += await pages.preadv(
                    [(SLOT_SIZE, header_offset(e)) for e in range(start, top)]
                )
        except OSError as exc:
            raise _oserror("opening the pages file", exc) from exc
        self._high = slots_in(size)
        unreadable = sum(isinstance(p, OSError) for p in headers)
        if unreadable:  # their slots' gfns are reported lost by the reconcile
            log.error("store.headers_unreadable", extents=unreadable)
        cols, self.lost_records = parse_headers(
            [None if isinstance(p, OSError) else p for p in headers]
        )
        headers.clear()  # a worker thread may keep the list: drop the pages now
        if self.lost_records:
            log.error("store.records_damaged", records=self.lost_records)
        max_gen = max(cols.gens, default=0)
        rows = cols.gfns, cols.gens, cols.slots, cols.crcs
        try:
            if cols.slots and cols.slots[-1] >= self._high:
                raise ValueError("a record names a slot past the end of the file")
            self.rows = RowIndex.from_columns(*rows)
        except ValueError:
            rows = _newest(cols, self._high)
            self.rows = RowIndex.from_columns(*rows)
        self._tags = cols.tags
        slot_gfn = array("I", [0]) * _data_index(self._high)
        self._slot_big = {}
        gfns, _, slots, _ = rows
        if gfns and max(gfns) < _BIG_GFN:
            data = list(map(_data_index, slots))
            scatter(slot_gfn, data, list(map((1).__add__, gfns)), key_runs(data))
        else:
            for gfn, slot in zip(gfns, slots, strict=True):
                if gfn < _BIG_GFN:
                    slot_gfn[_data_index(slot)] = gfn + 1
                else:
                    self._slot_big[slot] = gfn
        self._slot_gfn = slot_gfn
        unnamed = compress(range(len(slot_gfn) - 1, -1, -1), map(operator.not_, reversed(slot_gfn)))
        free = (d + d // 15 for d in unnamed)  # data index -> slot number
        self._free = array("I", (s for s in free if s not in self._slot_big))
        self._next_gen = max(int(meta.get("next_gen", 1)), max_gen + 1)
        self._meta_ok = meta.get("format") == FORMAT and "instance" in meta

    async def _read_meta(self) -> dict[str, Any]:
        try:
            f = await self.disk.open(META)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.error("store.meta_unreadable", error=str(exc))
            return {}
        try:
            data = await f.pread(1 << 16, 0)
        except OSError as exc:
            log.error("store.meta_unreadable", error=str(exc))
            return {}
        finally:
            await f.close()
        try:
            meta = json.loads(data)
            if not isinstance(meta, dict) or not isinstance(meta.get("instance"), str | None):
                raise ValueError("not a meta object")
            int(meta.get("next_gen", 1))
        except ValueError as exc:
            # The records carry what matters (tags, generations): nothing is lost.
            log.error("store.meta_damaged", error=str(exc))
            return {}
        return meta

    async def _write_meta(self) -> None:
        body = json.dumps(
            {"format": FORMAT, "instance": self.instance, "next_gen": self._next_gen}
        ).encode()
        tmp = META + ".tmp"
        f = await self.disk.open(tmp, create=True)
        try:
            await f.truncate(0)
            await f.pwritev([(0, body)])
            await f.sync()
        finally:
            await f.close()
        await self.disk.rename(tmp, META)
        await self.disk.sync_dir()
        self._meta_ok = True

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
                aside = await self._aside_name(self.instance or "unknown")
                await self.disk.mkdir(aside)
                await self._replace_files(aside)
                log.warning(
                    "store.set_aside",
                    old_instance=self.instance,
                    new_instance=instance,
                    rows=len(self.rows),
                    aside=aside,
                )
            elif self.instance is not None or self._high:
                # An empty store of another instance holds no page: nothing to keep.
                await self._replace_files(None)
                log.info("store.reset_empty", old_instance=self.instance, new_instance=instance)
        self.instance = instance
        self._tag = tag
        if outcome != "same" or not self._meta_ok:
            try:
                await self._write_meta()
            except OSError as exc:
                raise _oserror("writing meta.json", exc) from exc
        return outcome

    async def _aside_name(self, instance: str) -> str:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in instance)[:64]
        taken = set(await self.disk.listdir())
        n = 1
        while f"aside-{safe}-{n}" in taken:
            n += 1
        return f"aside-{safe}-{n}"

    async def _replace_files(self, aside: str | None) -> None:
        """Close the pages file, move the store's files to `aside` (or delete them), and
        open a fresh, empty store."""
        if self._file is not None:
            await self._file.close()
            self._file = None
        for name in (PAGES, META):
            try:
                if aside is None:
                    await self.disk.remove(name)
                else:
                    await self.disk.rename(name, f"{aside}/{name}")
            except FileNotFoundError:
                pass
        if aside is not None:
            await self.disk.sync_dir(aside)
        await self.disk.sync_dir()
        self._headers.clear()
        self.instance, self._meta_ok = None, False
        await self._load()

    # -- slots ------------------------------------------------------------------------

    def reserve(self, n: int, *, grow: bool = True) -> list[int]:
        """Take `n` slots for a page-out batch (fewer if `grow` is false and few are free)."""
        out: list[int] = []
        while self._free and len(out) < n:
            out.append(self._free.pop())
        if grow:
            while len(out) < n:
                if is_slot(self._high):
                    out.append(self._high)
                self._high += 1
        return out

    def release(self, slots: Iterable[int]) -> None:
        """Give back reserved slots that no persisted record names (a failed batch)."""
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

    def to_delete(self, keys: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """The (gfn, gen) keys that still name a row (a newer generation is kept)."""
        out = []
        for gfn, gen in keys:
            r = self.rows.get(gfn)
            if r is not None and r.gen == gen:
                out.append((gfn, gen))
        return out

    def _gfn_of(self, slot: int) -> int | None:
        i = _data_index(slot)
        if i < len(self._slot_gfn) and self._slot_gfn[i]:
            return self._slot_gfn[i] - 1
        return self._slot_big.get(slot) if self._slot_big else None

    def _set_gfn(self, slot: int, gfn: int | None) -> None:
        slot_gfn, i = self._slot_gfn, _data_index(slot)
        if i >= len(slot_gfn):
            slot_gfn.frombytes(bytes(4 * (i + 1 - len(slot_gfn) + 1024)))
        if gfn is not None and gfn >= _BIG_GFN:
            self._slot_big[slot] = gfn
            gfn = None
        else:
            self._slot_big.pop(slot, None)
        slot_gfn[i] = 0 if gfn is None else gfn + 1

    def _named(self, slot: int) -> bool:
        gfn = self._gfn_of(slot)
        if gfn is None:
            return False
        r = self.rows.get(gfn)
        return r is not None and r.slot == slot

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
        in one `pwritev`, `written()` (a crash point), then one sync. Then, and only then,
        the in-memory index changes. StoreError (and no change) if the phase failed, or if a
        row's slot is named by a row already (a bookkeeping bug: writing would lose that
        row's page)."""
        if twice := [r.slot for r in rows if self._named(r.slot)]:
            raise StoreError(f"slots {twice[:8]} are named by a row already", _errno.EIO)
        async with self._phase:
            if self._file is None or self.closed:
                raise StoreError("the store is closed", _errno.EIO)
            deletes = self.to_delete(dict.fromkeys(deletes))  # a key named twice: once
            overlay: dict[int, bytes] = {}
            for gfn, _ in deletes:
                overlay[self.rows[gfn].slot] = FREE_RECORD
            for r in rows:
                old = self.rows.get(r.gfn)
                if old is not None and old.slot != r.slot:
                    overlay[old.slot] = FREE_RECORD  # the newer generation replaces it
                overlay[r.slot] = encode(r.slot, self._tag, r.gfn, r.gen, r.crc)
            if not overlay:
                return
            headers = {e: self._header(e, overlay) for e in {s // EXTENT_SLOTS for s in overlay}}
            writes = _runs(
                [(slot_offset(r.slot), p) for r, p in zip(rows, pages, strict=True)]
                + [(header_offset(e), bytes(h)) for e, h in headers.items()]
            )
            try:
                await self._file.pwritev(writes)
            except OSError as exc:
                raise _oserror("slot write", exc) from exc
            if written is not None:
                written()
            try:
                await self._file.sync()
            except OSError as exc:
                raise _oserror("pages file sync", exc) from exc
            for e, h in headers.items():
                self._cache_header(e, h)
            self._applied(rows, deletes)

    async def delete_rows(self, keys: Sequence[tuple[int, int]]) -> None:
        """Durably free the rows `keys` names by (gfn, gen) (free records, one sync)."""
        await self.persist((), (), keys)

    def _header(self, extent: int, overlay: dict[int, bytes]) -> bytearray:
        cached = self._headers.get(extent)
        base = extent * EXTENT_SLOTS
        if cached is None:
            page = bytearray(b"".join(self._record(s) for s in range(base, base + EXTENT_SLOTS)))
        else:
            self._headers.move_to_end(extent)
            page = bytearray(cached)
        for s, rec in overlay.items():
            if base <= s < base + EXTENT_SLOTS:
                i = (s - base) * len(rec)
                page[i : i + len(rec)] = rec
        return seal(extent, page)

    def _record(self, slot: int) -> bytes:
        if not is_slot(slot):
            return FREE_RECORD  # the trailer's place: `seal` writes it
        gfn = self._gfn_of(slot)
        r = None if gfn is None else self.rows.get(gfn)
        if r is None or r.slot != slot:
            return FREE_RECORD
        return encode(slot, self._tag, r.gfn, r.gen, r.crc)

    def _cache_header(self, extent: int, header: bytearray) -> None:
        self._headers[extent] = header
        self._headers.move_to_end(extent)
        while len(self._headers) > HEADER_CACHE:
            self._headers.popitem(last=False)

    def _applied(self, rows: Sequence[Row], deletes: Sequence[tuple[int, int]]) -> None:
        for gfn, _ in deletes:
            slot = self.rows[gfn].slot
            del self.rows[gfn]
            self._set_gfn(slot, None)
            self._slot_freed(slot)
        for r in rows:
            old = self.rows.get(r.gfn)
            self.rows[r.gfn] = r
            if old is not None and old.slot != r.slot:
                self._set_gfn(old.slot, None)
                self._slot_freed(old.slot)
            self._set_gfn(r.slot, r.gfn)

    def _slot_freed(self, slot: int) -> None:
        if slot in self._pins:
            self._unpin_free.add(slot)
        else:
            self._free.append(slot)

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
        for r in rows:
            data = read(SLOT_SIZE, slot_offset(r.slot))
            if data is None:
                return None
            out.append(_verified(r, data))
        return out


def _data_index(slot: int) -> int:
    """The slot's place among data slots (slot numbers skip each sector's trailer)."""
    return slot - slot // 16


def _newest(cols: Columns, high: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """One row per gfn, the highest generation's, from slots below `high` (a slot past the
    end of the file has no data: its gfn is lost), as (gfns, gens, slots, crcs)."""
    gfns, gens, slots, crcs = cols.gfns, cols.gens, cols.slots, cols.crcs
    best: dict[int, tuple[int, int, int]] = {}
    for gfn, gen, slot, crc in zip(gfns, gens, slots, crcs, strict=True):
        if slot < high and (gfn not in best or gen > best[gfn][0]):
            best[gfn] = (gen, slot, crc)
    return (
        list(best),
        [v[0] for v in best.values()],
        [v[1] for v in best.values()],
        [v[2] for v in best.values()],
    )


def _verified(r: Row, data: bytes) -> bytes | StoreError:
    """The slot's bytes if they match the row's checksum, else a ChecksumError."""
    if len(data) != SLOT_SIZE or checksum(r.gfn, r.gen, data) != r.crc:
        return ChecksumError(f"gfn {r.gfn} gen {r.gen}: slot {r.slot} fails its checksum")
    return data


def _runs(writes: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """`writes` sorted by offset, with adjacent ones joined (fewer system calls)."""
    writes.sort(key=lambda w: w[0])
    out: list[tuple[int, bytes]] = []
    run: list[bytes] = []
    start = end = -1
    for offset, data in writes:
        if offset != end:
            if run:
                out.append((start, b"".join(run)))
            run, start = [], offset
        run.append(data)
        end = offset + len(data)
    if run:
        out.append((start, b"".join(run)))
    return out


__all__ = ["ChecksumError", "PageStore", "Row", "StoreError", "StoreLocked", "checksum"]
