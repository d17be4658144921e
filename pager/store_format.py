"""The pages file's on-disk format: extents of one header page and 120 data slots.

The pages file describes itself, so no separate index exists. It is a sequence of extents
of `EXTENT_BYTES`; extent ``e`` starts with a 4 KiB header page, then its data slots. The
header page is 8 sectors of 512 bytes; each sector holds 15 records of 32 bytes and a
32-byte trailer. Slot numbers follow the header's entries: slot ``128 e + 16 k + r``
(r < 15) is record r of sector k of extent e, and its data is data page ``15 k + r`` of
the extent; numbers with r = 15 name a trailer and are never a slot (`is_slot`).

A record::

    offset size
      0     4   b"XP\\x01\\x01": magic, version 1, kind 1 (live); anything else is free
      4     4   tag: crc32c of the hv instance the copy belongs to
      8     8   gfn
     16     8   gen
     24     4   data crc: `checksum(gfn, gen, data)`, CRC32C of the slot seeded with (gfn, gen)
     28     4   record crc: CRC32C of bytes 0..27 seeded with the slot number

A trailer: ``b"XPS\\x00"``, then the CRC32C of the sector's 15 records seeded with the
sector's number in the file, then zeros. Header pages are always written whole.

What is trusted: a sector whose trailer verifies, every record in it (the fast path:
recovery checks one crc per 15 records and takes the fields out column by column); in a
sector that does not verify, each record whose own crc verifies (the crc is seeded with
the slot, so a record or a page written to the wrong place does not). A power loss tears
writes at sector boundaries, so a torn header page leaves each sector old or new, each
verifiable. A data slot is served only if its data crc verifies: a torn or lost data
write is EIO, never wrong bytes. Recovery reads only the header pages (1 page in 121).
A header page that cannot be read at all at an open (its read failed
`HEADER_READ_ATTEMPTS` times, pager/store_open.py) is rewritten from the index before
anything else is written (`HeaderPages.clear`): its forgotten records must not come
back at a later open as the only record of a gfn paged out again meanwhile.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable, Sequence
from itertools import compress
from typing import Final, NamedTuple

import crc32c

from protocol import PAGE_SIZE

#: Bytes per data slot: one guest page.
SLOT_SIZE: Final = PAGE_SIZE
#: Header entries per extent (records and trailers): slot numbers per extent.
EXTENT_SLOTS: Final = 128
#: Bytes per record (and per trailer).
RECORD_SIZE: Final = 32
#: Bytes per sector: the unit a power loss tears writes at.
SECTOR: Final = 512
#: Records per sector (the 16th entry is the trailer).
SECTOR_RECORDS: Final = SECTOR // RECORD_SIZE - 1
#: Data slots per extent.
EXTENT_DATA: Final = EXTENT_SLOTS // (SECTOR_RECORDS + 1) * SECTOR_RECORDS
#: Bytes per extent: the header page and the data slots.
EXTENT_BYTES: Final = (EXTENT_DATA + 1) * SLOT_SIZE

LIVE: Final = b"XP\x01\x01"
TRAILER: Final = b"XPS\x00"  # kind byte 0: never taken for a live record
FREE_RECORD: Final = bytes(RECORD_SIZE)

_REC = struct.Struct("<4sIQQI")  # the first 28 bytes; the record crc follows
_CRC = struct.Struct("<I")
_GEN_KEY = struct.Struct("<QQ")
_ZERO_SECTOR: Final = bytes(SECTOR)

assert EXTENT_SLOTS * RECORD_SIZE == SLOT_SIZE == 8 * SECTOR


def checksum(gfn: int, gen: int, data: bytes) -> int:
    """CRC32C of a page, seeded with (gfn, gen): a misplaced or stale slot never verifies."""
    return crc32c.crc32c(data, crc32c.crc32c(_GEN_KEY.pack(gfn, gen)))


def checksums(gfns: Sequence[int], gens: Sequence[int], pages: Sequence[bytes]) -> list[int]:
    """`checksum` of each (gfn, gen, page), for a batch in one call (no call per page)."""
    crc, key = crc32c.crc32c, _GEN_KEY.pack
    return [crc(page, crc(key(g, gen))) for g, gen, page in zip(gfns, gens, pages, strict=True)]


def instance_tag(instance: str) -> int:
    """The 32-bit tag records carry for hv instance `instance`."""
    return crc32c.crc32c(instance.encode())


def is_slot(slot: int) -> bool:
    """Whether `slot` names a data slot (not a sector trailer)."""
    return slot % (SECTOR_RECORDS + 1) != SECTOR_RECORDS


def slot_offset(slot: int) -> int:
    """Where slot `slot`'s data starts in the pages file."""
    e, i = divmod(slot, EXTENT_SLOTS)
    return e * EXTENT_BYTES + (1 + i - i // (SECTOR_RECORDS + 1)) * SLOT_SIZE


def slot_offsets(slots: Iterable[int]) -> list[int]:
    """`slot_offset` of each slot, for a batch in one call (no call per slot)."""
    per, extent, trailer, size = EXTENT_SLOTS, EXTENT_BYTES, SECTOR_RECORDS + 1, SLOT_SIZE
    return [(s // per) * extent + (1 + s % per - (s % per) // trailer) * size for s in slots]


def header_offset(extent: int) -> int:
    """Where extent `extent`'s header page starts."""
    return extent * EXTENT_BYTES


def record_offset(slot: int) -> int:
    """Where slot `slot`'s header record starts in the pages file."""
    e, i = divmod(slot, EXTENT_SLOTS)
    return e * EXTENT_BYTES + i * RECORD_SIZE


def slots_in(size: int) -> int:
    """The slot numbers below which every slot's data lies whole in `size` bytes."""
    e, rest = divmod(size, EXTENT_BYTES)
    data = max(0, rest // SLOT_SIZE - 1)
    return e * EXTENT_SLOTS + data + data // SECTOR_RECORDS


def extents_in(size: int) -> int:
    """How many extents a pages file of `size` bytes has a whole header page of."""
    e, rest = divmod(size, EXTENT_BYTES)
    return e + (1 if rest >= SLOT_SIZE else 0)


def encode(slot: int, tag: int, gfn: int, gen: int, crc: int) -> bytes:
    """The 32-byte record of a live slot."""
    head = _REC.pack(LIVE, tag, gfn, gen, crc)
    return head + _CRC.pack(crc32c.crc32c(head, slot & 0xFFFFFFFF))


def encode_into(
    view: memoryview, at: int, slot: int, tag: int, gfn: int, gen: int, crc: int
) -> None:
    """Write the record of a live slot at `at` of `view` (a writable byte view): `encode`
    without building a bytes object (a header page is built from 120 of them)."""
    _REC.pack_into(view, at, LIVE, tag, gfn, gen, crc)
    _CRC.pack_into(view, at + 28, crc32c.crc32c(view[at : at + 28], slot & 0xFFFFFFFF))


def decode(slot: int, rec: bytes) -> tuple[int, int, int, int] | None:
    """(tag, gfn, gen, crc) of a live record that verifies on its own; None for a free or
    damaged one."""
    if (
        rec[:4] != LIVE
        or crc32c.crc32c(rec[:28], slot & 0xFFFFFFFF) != _CRC.unpack_from(rec, 28)[0]
    ):
        return None
    _, tag, gfn, gen, crc = _REC.unpack_from(rec)
    return tag, gfn, gen, crc


_PER: Final = SECTOR_RECORDS * RECORD_SIZE  # record bytes per sector
_PAGE_CRC: Final = _PER + 8  # where sector 0's trailer keeps the whole page's crc


def _page_crc(extent: int, page: bytes | bytearray | memoryview) -> int:
    view = memoryview(page)
    return crc32c.crc32c(view[_PAGE_CRC + 4 :], crc32c.crc32c(view[:_PAGE_CRC], extent))


def sealed_crc(extent: int, page: bytes | bytearray) -> int | None:
    """The whole-page crc that header page `page` of `extent` carries, if it verifies (the
    page is whole, written by `seal` for this extent), else None."""
    if len(page) != SLOT_SIZE:
        return None
    crc: int = _CRC.unpack_from(page, _PAGE_CRC)[0]
    return crc if crc == _page_crc(extent, page) else None


def seal(extent: int, page: bytearray) -> bytearray:
    """Write the trailers of header page `page` of `extent` (in place): each sector's crc,
    then in sector 0's trailer the crc of the whole page (recovery's fast path)."""
    view = memoryview(page)
    for k in range(8):
        at = k * SECTOR
        crc = crc32c.crc32c(view[at : at + _PER], (extent * 8 + k) & 0xFFFFFFFF)
        page[at + _PER : at + SECTOR] = TRAILER + _CRC.pack(crc) + bytes(RECORD_SIZE - 8)
    view.release()
    _CRC.pack_into(page, _PAGE_CRC, _page_crc(extent, page))
    return page


def header_page(extent: int, records: Iterable[bytes]) -> bytearray:
    """The sealed header page of `extent` from its 128 entries (trailer entries ignored)."""
    return seal(extent, bytearray(b"".join(records)))


def _check_sector(buf: bytearray, n: int) -> int:
    """Free every record of sector `n` of `buf` that is not trusted; how many were not free."""
    at = n * SECTOR
    sector = bytes(buf[at : at + SECTOR])
    if sector[_PER : _PER + 4] == TRAILER and _CRC.unpack_from(sector, _PER + 4)[0] == (
        crc32c.crc32c(sector[:_PER], n & 0xFFFFFFFF)
    ):
        return 0  # the sector is whole: every record in it stands
    if sector == _ZERO_SECTOR:
        return 0
    damaged = 0
    for r in range(SECTOR_RECORDS + 1):  # salvage each record that verifies alone
        rec = sector[r * RECORD_SIZE : (r + 1) * RECORD_SIZE]
        if r == SECTOR_RECORDS or decode(n * 16 + r, rec) is None:
            damaged += rec != FREE_RECORD and r != SECTOR_RECORDS
            buf[at + r * RECORD_SIZE : at + (r + 1) * RECORD_SIZE] = FREE_RECORD
    return damaged


class Columns(NamedTuple):
    """The live records found in header pages, column by column."""

    slots: list[int]  # ascending
    tags: set[int]
    gfns: list[int]
    gens: list[int]
    crcs: list[int]


class Parsed(NamedTuple):
    """What the header pages of a pages file say (`parse_pages`)."""

    cols: Columns  # the trusted live records
    damaged: int  # non-free entries neither in a verified sector nor verified alone
    live: bytes  # by slot number: 1 for a trusted live record, else 0
    whole: array[int]  # by extent: the page's crc if it verified whole, else 0


def parse_headers(pages: list[bytes | None]) -> tuple[Columns, int]:
    """The live records of header pages 0, 1, ... (None: unreadable, nothing from it), and
    how many non-free entries were damaged (neither a verified sector nor record)."""
    got = parse_pages(pages)
    return got.cols, got.damaged


def parse_pages(pages: list[bytes | None]) -> Parsed:
    """`parse_headers`, with the live records' map by slot and the crcs of whole pages."""
    buf = bytearray(b"".join(p if p is not None else bytes(SLOT_SIZE) for p in pages))
    damaged = 0
    whole = array("I", bytes(4 * len(pages)))
    for e in range(len(buf) // SLOT_SIZE):
        base = e * SLOT_SIZE
        crc = _CRC.unpack_from(buf, base + _PAGE_CRC)[0]
        if pages[e] is not None and crc == _page_crc(e, memoryview(buf)[base : base + SLOT_SIZE]):
            whole[e] = crc
            continue  # the fast path: the page is whole, every record stands
        for n in range(e * 8, e * 8 + 8):
            damaged += _check_sector(buf, n)
    view = memoryview(buf)
    if sys.byteorder != "little":  # the format is little-endian
        raise NotImplementedError("the pages file is read on little-endian hosts only")
    w32, w64 = view.cast("I"), view.cast("Q")
    # In trusted sectors an entry is a live record, a free one (zeros) or a trailer (kind
    # byte 0): the kind byte alone tells the live ones, at C speed.
    live = bytes(buf[3::RECORD_SIZE])
    cols = Columns(
        list(compress(range(len(live)), live)),
        set(compress(w32[1::8], live)),
        list(compress(w64[1::4], live)),
        list(compress(w64[2::4], live)),
        list(compress(w32[6::8], live)),
    )
    del w32, w64
    view.release()
    return Parsed(cols, damaged, live, whole)


def slot_runs(slots: Sequence[int]) -> list[tuple[int, int]]:
    """(file offset, slot count) of each run of `slots` next to each other in the file, in
    the given order (one read per run; `pager.disk.join_runs` is the same for writes)."""
    out: list[tuple[int, int]] = []
    end = -1
    for slot in slots:
        at = slot_offset(slot)
        if at == end:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((at, 1))
        end = at + SLOT_SIZE
    return out


__all__ = [
    "EXTENT_BYTES",
    "EXTENT_DATA",
    "EXTENT_SLOTS",
    "FREE_RECORD",
    "RECORD_SIZE",
    "SLOT_SIZE",
    "Columns",
    "Parsed",
    "checksum",
    "checksums",
    "decode",
    "encode",
    "encode_into",
    "extents_in",
    "header_offset",
    "header_page",
    "instance_tag",
    "is_slot",
    "parse_headers",
    "parse_pages",
    "record_offset",
    "seal",
    "sealed_crc",
    "slot_offset",
    "slot_offsets",
    "slot_runs",
    "slots_in",
]
