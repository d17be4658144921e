"""Header pages of a disk phase: read back from the page cache when they are what the last
synced phase wrote, rebuilt from the in-memory index otherwise; one write+sync call."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hookdisk import CallLog
from memdisk import MemDisk

import pager.store_headers
from pager import PageStore, RealDisk, Row, StoreError, checksum, parse_faults
from pager.disk import Disk, write_and_sync
from pager.store import PAGES
from pager.store_faults import FaultyDisk
from pager.store_format import EXTENT_BYTES
from protocol import PAGE_SIZE


def page(n: int) -> bytes:
    return bytes([n % 251]) * PAGE_SIZE


async def open_store(disk: Disk) -> PageStore:
    store = await PageStore.open(disk, lock_wait=0.2)
    await store.bind_instance("A")
    return store


def new_rows(store: PageStore, gfns: list[int]) -> tuple[list[Row], list[bytes]]:
    slots = store.reserve(len(gfns))
    rows, pages = [], []
    for g, s in zip(gfns, slots, strict=True):
        gen = store.next_gen()
        pages.append(page(g))
        rows.append(Row(g, gen, s, checksum(g, gen, page(g))))
    return rows, pages


async def put(store: PageStore, gfns: list[int]) -> list[Row]:
    rows, pages = new_rows(store, gfns)
    await store.persist(rows, pages)
    return rows


async def test_a_failed_phase_leaves_no_record_in_a_later_header_page(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A phase whose write landed but whose sync failed changed the page cache, not the
    index: the next phase on that extent must not read those records back (their data
    is valid, so a reopened store would adopt gfns whose page-out never happened)."""
    monkeypatch.setattr(
        pager.store_headers, "HEADER_CACHE", 0
    )  # no page kept: read back or rebuilt
    disk = MemDisk()
    store = await open_store(FaultyDisk(disk, parse_faults("store.fsync=EIO@2")))
    kept = await put(store, [1, 2, 3])  # sync 1
    rows, pages = new_rows(store, [7, 8])
    with pytest.raises(StoreError):
        await store.persist(rows, pages)  # written, sync 2 fails: nothing changes
    store.release(r.slot for r in rows)
    await store.delete_rows([(kept[0].gfn, kept[0].gen)])  # rewrites extent 0's header
    await store.close()
    again = await open_store(disk)
    assert again.rows == {2: kept[1], 3: kept[2]}
    await again.close()


async def test_read_back_headers_are_the_rebuilt_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same phases on two stores, one reading header pages back from the disk (with
    `preadv`: its disk has no page cache), one rebuilding every page from the index: the
    pages files stay byte for byte equal, and the first rebuilds only new extents' pages."""
    monkeypatch.setattr(pager.store_headers, "HEADER_CACHE", 2)
    rnd = random.Random(5)
    disks = [MemDisk(), MemDisk()]
    disks[0].no_cache = True
    stores = [await open_store(d) for d in disks]
    stores[1]._headers._want = lambda extent: 0  # type: ignore[method-assign]  # never read back
    gfns = range(4000)  # over 30 extents
    for store in stores:
        for start in range(0, 3000, 500):
            await put(store, list(range(start, start + 500)))
    for _ in range(40):
        paged = list(stores[0].rows)
        out = rnd.sample([g for g in gfns if g not in stores[0].rows], 150)
        back = rnd.sample(paged, 150)
        for store in stores:
            rows, pages = new_rows(store, out)
            await store.persist(rows, pages, [(g, store.rows[g].gen) for g in back])
        assert stores[0].rows == stores[1].rows
        assert disks[0].names[PAGES].data == disks[1].names[PAGES].data
    extents = len(disks[0].names[PAGES].data) // EXTENT_BYTES + 1
    assert stores[0]._headers.rebuilt <= extents < stores[1]._headers.rebuilt // 10
    for store in stores:
        await store.close()


async def test_a_reopened_store_reads_back_the_pages_it_found_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pager.store_headers, "HEADER_CACHE", 0)
    disk = MemDisk()
    store = await open_store(disk)
    rows = await put(store, list(range(600)))  # 5 extents
    await store.close()
    again = await open_store(disk)
    await again.delete_rows([(r.gfn, r.gen) for r in rows[::7]])
    more = await put(again, [1000, 1001])  # into freed slots
    assert again._headers.rebuilt == 0
    assert {r.slot for r in more} <= {r.slot for r in rows[::7]}
    await again.close()
    third = await open_store(disk)
    assert third.rows == again.rows
    await third.close()


async def test_write_and_sync_is_one_call_on_a_real_disk_and_two_through_a_wrapper(
    tmp_path: Path,
) -> None:
    disk = RealDisk(tmp_path)
    f = await disk.open("f", create=True)
    await write_and_sync(f, [(0, b"ab"), (4096, b"cd")])
    assert await f.pread(2, 4096) == b"cd"
    wrapped = CallLog(f)
    await write_and_sync(wrapped, [(2, b"xy")])  # a wrapper's own calls run
    assert wrapped.calls == ["pwritev", "sync"]
    assert await f.pread(4, 0) == b"abxy"
    await f.close()
