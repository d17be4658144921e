"""The pages file's on-disk format: extents of one header page and 128 data slots.

The pages file describes itself, so no separate index exists. It is a sequence of extents;
extent ``e`` starts at ``e * EXTENT_BYTES`` with a 4 KiB header page of 128 records of 32
bytes, then the 128 data slots of slots ``128 e .. 128 e + 127``. Record ``i`` of the
header describes slot ``128 e + i``::

    offset size
      0     2   magic  b"XP"
      2     1   version (1)
      3     1   kind: 1 = the slot holds gfn's copy of generation gen; any other = free
      4     4   tag: crc32c of the hv instance the copy belongs to
      8     8   gfn
     16     8   gen
     24     4   data crc: `checksum(gfn, gen, data)`, CRC32C of the slot seeded with (gfn, gen)
     28     4   record crc: CRC32C of bytes 0..27 seeded with the slot number

An all-zero record (never written) is a free slot. A record is trusted only if its own crc
verifies: the crc is seeded with the slot, so a header page written to the wrong extent
does not verify either. 32-byte records never straddle a 512-byte sector, so a header page
torn at a sector boundary leaves every record either old or new, each verifiable. A data
slot is served only if its data crc verifies: a torn or lost data write is EIO, never
wrong bytes. Recovery reads only the header pages (1 page in 129).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Final

import crc32c

from protocol import PAGE_SIZE

#: Bytes per data slot: one guest page.
SLOT_SIZE: Final = PAGE_SIZE
#: Data slots per extent (one header page of 32-byte records describes them).
EXTENT_SLOTS: Final = 128
#: Bytes per record.
RECORD_SIZE: Final = 32
#: Bytes per extent: the header page and the data slots.
EXTENT_BYTES: Final = (EXTENT_SLOTS + 1) * SLOT_SIZE

MAGIC: Final = b"XP"
VERSION: Final = 1
LIVE: Final = 1

_REC = struct.Struct("<2sBBIQQI")  # the first 28 bytes; the record crc follows
_CRC = struct.Struct("<I")
_GEN_KEY = struct.Struct("<QQ")
_SLOT_KEY = struct.Struct("<Q")
_U64: Final = 1 << 64
FREE_RECORD: Final = bytes(RECORD_SIZE)

assert EXTENT_SLOTS * RECORD_SIZE == SLOT_SIZE


def checksum(gfn: int, gen: int, data: bytes) -> int:
    """CRC32C of a page, seeded with (gfn, gen): a misplaced or stale slot never verifies."""
    return crc32c.crc32c(data, crc32c.crc32c(_GEN_KEY.pack(gfn, gen)))


def instance_tag(instance: str) -> int:
    """The 32-bit tag records carry for hv instance `instance`."""
    return crc32c.crc32c(instance.encode())


def slot_offset(slot: int) -> int:
    """Where slot `slot`'s data starts in the pages file."""
    e, i = divmod(slot, EXTENT_SLOTS)
    return e * EXTENT_BYTES + (i + 1) * SLOT_SIZE


def header_offset(extent: int) -> int:
    """Where extent `extent`'s header page starts."""
    return extent * EXTENT_BYTES


def record_offset(slot: int) -> int:
    """Where slot `slot`'s header record starts in the pages file."""
    e, i = divmod(slot, EXTENT_SLOTS)
    return e * EXTENT_BYTES + i * RECORD_SIZE


def slots_in(size: int) -> int:
    """How many slots a pages file of `size` bytes holds whole (header and data)."""
    e, rest = divmod(size, EXTENT_BYTES)
    return e * EXTENT_SLOTS + max(0, rest // SLOT_SIZE - 1)


def extents_in(size: int) -> int:
    """How many extents a pages file of `size` bytes has a whole header page of."""
    e, rest = divmod(size, EXTENT_BYTES)
    return e + (1 if rest >= SLOT_SIZE else 0)


def _seed(slot: int) -> int:
    return crc32c.crc32c(_SLOT_KEY.pack(slot))


def encode(slot: int, tag: int, gfn: int, gen: int, crc: int) -> bytes:
    """The 32-byte record of a live slot."""
    head = _REC.pack(MAGIC, VERSION, LIVE, tag, gfn, gen, crc)
    return head + _CRC.pack(crc32c.crc32c(head, _seed(slot)))


class Record(tuple[int, int, int, int, int]):
    """A decoded live record: (slot, tag, gfn, gen, crc)."""

    __slots__ = ()


def decode(slot: int, rec: bytes) -> tuple[int, int, int, int] | None:
    """(tag, gfn, gen, crc) of a live record that verifies; None for a free, foreign or
    damaged one (use `verifies` to tell free from damaged)."""
    if rec[:4] != b"XP\x01\x01":
        return None
    if crc32c.crc32c(rec[:28], _seed(slot)) != _CRC.unpack_from(rec, 28)[0]:
        return None
    _, _, _, tag, gfn, gen, crc = _REC.unpack_from(rec)
    return tag, gfn, gen, crc


def damaged(slot: int, rec: bytes) -> bool:
    """True if `rec` is neither free (all zero) nor a record that verifies."""
    return rec != FREE_RECORD and decode(slot, rec) is None


def live_records(extent: int, page: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(slot, tag, gfn, gen, crc) of each live record of a header page that verifies."""
    base = extent * EXTENT_SLOTS
    find = page.find
    i = find(b"XP\x01\x01")
    while i >= 0:
        if i % RECORD_SIZE == 0:
            slot = base + i // RECORD_SIZE
            got = decode(slot, page[i : i + RECORD_SIZE])
            if got is not None:
                yield (slot, *got)
            i = find(b"XP\x01\x01", i + RECORD_SIZE)
        else:
            i = find(b"XP\x01\x01", i - i % RECORD_SIZE + RECORD_SIZE)


def damaged_records(extent: int, page: bytes) -> list[int]:
    """Slots of `page` whose record is neither free nor verifies (for reports)."""
    base = extent * EXTENT_SLOTS
    return [
        base + i
        for i in range(EXTENT_SLOTS)
        if damaged(base + i, page[i * RECORD_SIZE : (i + 1) * RECORD_SIZE])
    ]


__all__ = [
    "EXTENT_BYTES",
    "EXTENT_SLOTS",
    "FREE_RECORD",
    "RECORD_SIZE",
    "SLOT_SIZE",
    "checksum",
    "damaged",
    "damaged_records",
    "decode",
    "encode",
    "extents_in",
    "header_offset",
    "instance_tag",
    "live_records",
    "record_offset",
    "slot_offset",
    "slots_in",
]
