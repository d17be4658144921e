"""The pages file's format (pager/store_format.py): torn and corrupted header records and
data slots are detected, at every 512-byte boundary, and never served."""

from __future__ import annotations

import itertools
import random

from memdisk import MemDisk

from pager import PageStore, Row, checksum
from pager.disk import SECTOR
from pager.store import PAGES
from pager.store_format import (
    EXTENT_BYTES,
    EXTENT_DATA,
    EXTENT_SLOTS,
    FREE_RECORD,
    RECORD_SIZE,
    SLOT_SIZE,
    checksums,
    decode,
    encode,
    header_page,
    is_slot,
    parse_headers,
    slot_offset,
    slot_offsets,
    slots_in,
)


def page(gfn: int, version: int) -> bytes:
    return random.Random(gfn * 1000 + version).randbytes(SLOT_SIZE)


def test_a_record_round_trips_and_every_flipped_byte_is_detected() -> None:
    rec = encode(130, 7, gfn=99, gen=12345, crc=0xDEADBEEF)
    assert len(rec) == RECORD_SIZE
    assert decode(130, rec) == (7, 99, 12345, 0xDEADBEEF)
    for i in range(RECORD_SIZE):
        for bit in (0x01, 0x80):
            bad = bytearray(rec)
            bad[i] ^= bit
            assert decode(130, bytes(bad)) is None, (i, bit)
    assert decode(131, rec) is None  # a record written for another slot
    assert decode(130, bytes(RECORD_SIZE)) is None  # free


def _page(extent: int, version: int) -> bytes:
    base = extent * EXTENT_SLOTS
    return bytes(
        header_page(
            extent,
            (
                encode(s, 1, s + 1000 * version, version, s)
                if is_slot(s) and (version == 1 or s % 3)
                else FREE_RECORD
                for s in range(base, base + EXTENT_SLOTS)
            ),
        )
    )


def _found(pages: list[bytes | None]) -> dict[int, tuple[int, int, int]]:
    cols, _ = parse_headers(pages)
    return dict(zip(cols.slots, zip(cols.gfns, cols.gens, cols.crcs, strict=True), strict=True))


def test_a_header_page_torn_at_any_sector_boundary_keeps_each_record_old_or_new() -> None:
    old, new = _page(1, 1), _page(1, 2)
    blank = bytes(SLOT_SIZE)
    olds, news = _found([blank, old]), _found([blank, new])
    assert len(olds) == EXTENT_DATA and 0 < len(news) < EXTENT_DATA
    sectors = SLOT_SIZE // SECTOR
    for landed in itertools.product((False, True), repeat=sectors):  # every subset
        torn = b"".join(
            (new if landed[k] else old)[k * SECTOR : (k + 1) * SECTOR] for k in range(sectors)
        )
        got = _found([blank, torn])
        for slot in range(EXTENT_SLOTS, 2 * EXTENT_SLOTS):
            expect = news if landed[(slot - EXTENT_SLOTS) * RECORD_SIZE // SECTOR] else olds
            assert got.get(slot) == expect.get(slot)


def test_a_damaged_sector_keeps_every_record_that_verifies_alone() -> None:
    good = _found([_page(0, 1)])
    for at in (5 * RECORD_SIZE + 9, 15 * RECORD_SIZE + 5, 2 * SECTOR + 3):  # record, trailer
        bad = bytearray(_page(0, 1))
        bad[at] ^= 0x40
        got = _found([bytes(bad)])
        slot = at // RECORD_SIZE
        if is_slot(slot):
            assert got == {s: v for s, v in good.items() if s != slot}
        else:
            assert got == good  # only the trailer was hit: every record stands alone
    moved = _found([bytes(SLOT_SIZE), _page(0, 1)])  # extent 0's page written at extent 1
    assert moved == {}
    _, damaged = parse_headers([bytes(SLOT_SIZE), _page(0, 1)])
    assert damaged == EXTENT_DATA


def test_a_data_slot_torn_or_corrupted_never_verifies() -> None:
    old, new = page(1, 1), page(1, 2)
    crc = checksum(1, 2, new)
    for cut in range(SECTOR, SLOT_SIZE, SECTOR):
        assert checksum(1, 2, new[:cut] + old[cut:]) != crc
        assert checksum(1, 2, old[:cut] + new[cut:]) != crc
        assert checksum(1, 2, new[:cut] + bytes(SLOT_SIZE - cut)) != crc  # lost tail
    rng = random.Random(0)
    for _ in range(200):
        bad = bytearray(new)
        bad[rng.randrange(SLOT_SIZE)] ^= 1 << rng.randrange(8)
        assert checksum(1, 2, bytes(bad)) != crc
    assert checksum(2, 2, new) != crc and checksum(1, 3, new) != crc  # other gfn or gen


def test_geometry() -> None:
    slots = [s for s in range(3 * EXTENT_SLOTS) if is_slot(s)]
    offsets = [slot_offset(s) for s in slots]
    headers = {0, EXTENT_BYTES, 2 * EXTENT_BYTES}
    assert sorted(offsets + sorted(headers)) == list(range(0, 3 * EXTENT_BYTES, SLOT_SIZE))
    assert slot_offset(0) == SLOT_SIZE and slot_offset(16) == 16 * SLOT_SIZE
    assert slots_in(0) == 0 and slots_in(SLOT_SIZE) == 0 and slots_in(2 * SLOT_SIZE) == 1
    assert slots_in(EXTENT_BYTES) == EXTENT_SLOTS
    for s in slots:  # exactly the slots whose data lies whole in the file
        assert [t for t in slots if t < slots_in(slot_offset(s) + SLOT_SIZE)][-1] == s
        assert s >= slots_in(slot_offset(s) + SLOT_SIZE - 1)


async def test_a_phase_torn_at_every_sector_boundary_serves_no_wrong_byte() -> None:
    """A batch (new rows, a re-paged gfn, frees) written in one pwritev and cut by a power
    loss at each 512-byte boundary of the file, keeping the part before or after the cut:
    every copy made durable before the phase is intact, every row the store then finds
    reads back its own bytes or fails, never another's."""
    disk = MemDisk()
    store = await PageStore.open(disk, lock_wait=0)
    written: dict[tuple[int, int], bytes] = {}

    async def batch(gfns: list[int], version: int, frees: list[tuple[int, int]]) -> list[Row]:
        slots = store.reserve(len(gfns))
        rows = []
        for g, s in zip(gfns, slots, strict=True):
            gen = store.next_gen()
            written[(g, gen)] = page(g, version)
            rows.append(Row(g, gen, s, checksum(g, gen, written[(g, gen)])))
        await store.persist(rows, [written[(r.gfn, r.gen)] for r in rows], frees)
        return rows

    durable = await batch(list(range(150)), 0, [])  # two extents
    await store.delete_rows([(r.gfn, r.gen) for r in durable[:20]])  # free slots to reuse
    kept = {r.gfn: r for r in durable[20:]}
    before = bytes(disk.path_bytes(PAGES))
    frees = [(r.gfn, r.gen) for r in durable[20:30]]  # paged back in: freed in this phase
    await batch([500, 501, 502, 25, *range(600, 630)], 1, frees)
    after = bytes(disk.path_bytes(PAGES))
    await store.abandon()
    must = {g: r for g, r in kept.items() if g not in range(20, 30)}
    # Cuts where the images differ: every sector boundary of the header pages and of the
    # first and last slots written, and the slot boundaries in between.
    diff = [
        i for i in range(0, len(after), SECTOR) if before[i : i + SECTOR] != after[i : i + SECTOR]
    ]
    headers = {h + k * SECTOR for h in (0, EXTENT_BYTES) for k in range(SLOT_SIZE // SECTOR + 1)}
    cuts = sorted({*headers, *diff[:16], *diff[-16:], *(d for d in diff if d % SLOT_SIZE == 0)})
    for cut in cuts:
        for image in (after[:cut] + before[cut:], before[:cut] + after[cut:]):
            disk.set_bytes(PAGES, image)
            again = await PageStore.open(disk, lock_wait=0)
            rows = list(again.rows.values())
            for g, r in must.items():
                if g != 25:  # re-paged: the old or the new copy
                    assert again.rows.get(g) == r, (cut, g)
            for row, data in zip(rows, await again.read_slots(rows), strict=True):
                if isinstance(data, bytes):
                    # A bool: pytest would diff 4 KiB of bytes (minutes with CI set).
                    same = data == written[(row.gfn, row.gen)]
                    assert same, (cut, row)
                else:
                    assert row.gfn not in must or row.gfn == 25, (cut, row, data)
            assert isinstance(again.rows.get(25), Row)
            await again.abandon()


def test_the_batch_forms_give_what_the_one_at_a_time_forms_give() -> None:
    """`slot_offsets`, `checksums` and `rows_of` (page-out's per-batch calls) agree with
    `slot_offset`, `checksum` and `Row` on every slot of the first extents and on far ones."""
    from pager.rowindex import rows_of

    slots = [*range(3 * EXTENT_SLOTS + 7), 2**31 - 1, 2**32 - 1, 123_456_789]
    assert slot_offsets(slots) == [slot_offset(s) for s in slots]
    pages = [bytes([i]) * SLOT_SIZE for i in range(5)]
    gfns, gens = [9, 0, 2**40, 7, 7], [1, 2, 3, 2**63, 4]
    crcs = checksums(gfns, gens, pages)
    assert crcs == [checksum(g, n, p) for g, n, p in zip(gfns, gens, pages, strict=True)]
    rows = rows_of(gfns, gens, slots[:5], crcs)
    assert rows == [Row(*f) for f in zip(gfns, gens, slots[:5], crcs, strict=True)]
    assert all(type(r) is Row for r in rows)
