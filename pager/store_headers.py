"""The header pages a disk phase writes: kept, read back, or rebuilt from the index.

A phase rewrites the whole header page of every extent it changes (pager/store_format.py).
The page must say what the in-memory index says after the phase, so it is made, in order
of cost, from:

1. the last pages written (`HEADER_CACHE` of them, patched in memory);
2. the page as the last synced phase wrote it (or as the store found it at open), read
   back from the disk: one `pread_cached` when the page cache holds it, else one `preadv`
   for all such pages of the phase. It is used only if it carries the whole-page crc kept
   for its extent (`sealed`, 4 bytes an extent): then it is that page, byte for byte, and
   the index changed since only in phases that rewrote it. A failed phase's page (written,
   never synced), a damaged page or another one never matches;
3. a rebuild from the index: the rows whose slot lies in the extent (a walk of every row,
   for the rare page that is none of the above; a new extent's page, where no row names a
   slot, is all free records at once).
"""

from __future__ import annotations

import errno as _errno
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

import structlog

from .disk import DiskFile, write_and_sync
from .rowindex import Row, RowIndex
from .store_errors import StoreError, oserror
from .store_format import (
    EXTENT_SLOTS,
    FREE_RECORD,
    RECORD_SIZE,
    SLOT_SIZE,
    encode_into,
    header_offset,
    seal,
    sealed_crc,
)

log = structlog.get_logger("pager.store")

#: Header pages kept in memory for the extents written last (patched, not rebuilt).
HEADER_CACHE: Final = 16


class HeaderPages:
    """The header pages of one open pages file (module doc)."""

    def __init__(self, sealed: array[int] | None = None) -> None:
        self._cache: OrderedDict[int, bytearray] = OrderedDict()
        #: extent -> whole-page crc of its header page as last synced (0: unknown).
        self.sealed: array[int] = sealed if sealed is not None else array("I")
        self.rebuilt = 0  # pages built from the index (for tests and profiles)

    def forget(self) -> None:
        """Trust no page kept or on disk any more (the records' tag changed, new files)."""
        self._cache.clear()
        self.sealed = array("I")

    async def pages(
        self,
        file: DiskFile,
        changes: dict[int, list[tuple[int, Row | None]]],
        rows: RowIndex,
        used: bytearray,
        tag: int,
    ) -> dict[int, bytearray]:
        """The sealed header page of each extent of `changes` (extent -> its changes:
        (slot, the live row it is to hold, or None to free it)), with the changes over
        what the index says (`used`: by slot, 1 where a row names it). The records are
        encoded in place, no bytes object per record."""
        out: dict[int, bytearray] = {}
        unread: list[int] = []
        for e in changes:
            page = self._cache.get(e)
            if page is not None:
                self._cache.move_to_end(e)
                out[e] = bytearray(page)
            elif self._want(e):
                data = file.pread_cached(SLOT_SIZE, header_offset(e))
                if data is not None and sealed_crc(e, data) == self._want(e):
                    out[e] = bytearray(data)
                else:
                    unread.append(e)
            else:
                out[e] = self._rebuild(e, rows, used, tag)
        if unread:
            got = await file.preadv([(SLOT_SIZE, header_offset(e)) for e in unread])
            for e, read in zip(unread, got, strict=True):
                if isinstance(read, bytes) and sealed_crc(e, read) == self._want(e):
                    out[e] = bytearray(read)
                else:
                    out[e] = self._rebuild(e, rows, used, tag)
        for e, page in out.items():
            base = e * EXTENT_SLOTS
            with memoryview(page) as view:
                for s, row in changes[e]:
                    at = (s - base) * RECORD_SIZE
                    if row is None:
                        page[at : at + RECORD_SIZE] = FREE_RECORD
                    else:
                        encode_into(view, at, s, tag, row.gfn, row.gen, row.crc)
            seal(e, page)
        return out

    async def clear(
        self, file: DiskFile, extents: list[int], rows: RowIndex, used: bytearray, tag: int
    ) -> None:
        """Rewrite the header pages of `extents`, unreadable at the store's open (every
        read of them failed, `load_pages`), from the index (which names none of their
        slots), durably: the open calls this before anything else is written.

        Their records are forgotten (the reconcile reports their gfns lost), but they are
        still on the media: were one readable at a later open while a newer record of its
        gfn written meanwhile were not, recovery would take it for the gfn's copy and
        serve its older bytes (sim seed 1356 of the default scenario did). StoreError
        (EIO), and no open, if the rewrite does not land."""
        try:
            headers = await self.pages(file, {e: [] for e in extents}, rows, used, tag)
            writes = sorted((header_offset(e), bytes(h)) for e, h in headers.items())
            landed = await write_and_sync(
                file, writes, [(SLOT_SIZE, header_offset(e)) for e in headers]
            )
        except OSError as exc:
            what = f"rewriting the unreadable header pages of extents {extents[:8]}"
            raise oserror(what, exc) from exc
        check_landed(headers, landed)
        self.synced(headers)
        log.warning("store.headers_cleared", extents=len(extents), first=extents[:8])

    def synced(self, pages: dict[int, bytearray]) -> None:
        """Keep the pages a phase wrote, once its sync returned (never before)."""
        sealed = self.sealed
        for e, page in pages.items():
            if e >= len(sealed):
                sealed.frombytes(bytes(4 * (e + 1 - len(sealed) + 64)))
            sealed[e] = sealed_crc(e, page) or 0
            self._cache[e] = page
            self._cache.move_to_end(e)
        while len(self._cache) > HEADER_CACHE:
            self._cache.popitem(last=False)

    def _want(self, extent: int) -> int:
        return self.sealed[extent] if extent < len(self.sealed) else 0

    def _rebuild(self, extent: int, rows: RowIndex, used: bytearray, tag: int) -> bytearray:
        """Extent `extent`'s header page (trailers unsealed) from the index: a record for
        each row whose slot lies in the extent (none, without a walk, in a new extent)."""
        base = extent * EXTENT_SLOTS
        page = bytearray(SLOT_SIZE)
        if not any(used[base : base + EXTENT_SLOTS]):
            return page
        self.rebuilt += 1
        view = memoryview(page)
        for r in rows.rows_in_slots(base, base + EXTENT_SLOTS):
            encode_into(view, (r.slot - base) * RECORD_SIZE, r.slot, tag, r.gfn, r.gen, r.crc)
        view.release()
        return page


def check_landed(headers: dict[int, bytearray], landed: Sequence[bytes | OSError]) -> None:
    """StoreError (EIO) unless every header page written reads back from the media as it
    was written (`headers`, extent -> page, in the order of `landed`): a phase whose
    header page did not land has failed, as if its sync had."""
    for (e, page), got in zip(headers.items(), landed, strict=True):
        if isinstance(got, OSError) or got != page:
            what = got if isinstance(got, OSError) else "other bytes than written"
            log.warning("store.header_not_landed", extent=e, got=str(what))
            raise StoreError(
                f"the header page of extent {e} did not land: read back {what}", _errno.EIO
            )


__all__ = ["HEADER_CACHE", "HeaderPages", "check_landed"]
