"""The paging store on its own: durability rules, slot reuse, generations, faults, lock."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import trio
import trio.testing
from memdisk import MemDisk, PowerCut

from pager import PageStore, RealDisk, Row, StoreError, StoreLocked, checksum, parse_faults
from pager.disk import Disk
from pager.store import META, PAGES
from pager.store_faults import FaultyDisk
from protocol import PAGE_SIZE


def entries(path: Path) -> list[Path]:
    return list(path.iterdir())


def page(n: int) -> bytes:
    return bytes([n % 251]) * PAGE_SIZE


async def open_store(where: Path | Disk, spec: str = "") -> PageStore:
    disk: Disk = RealDisk(where) if isinstance(where, Path) else where
    if spec:
        disk = FaultyDisk(disk, parse_faults(spec))
    return await PageStore.open(disk, lock_wait=0.2)


def new_rows(store: PageStore, gfns: list[int], fill: int = 0) -> tuple[list[Row], list[bytes]]:
    slots = store.reserve(len(gfns))
    rows, pages = [], []
    for g, s in zip(gfns, slots, strict=True):
        gen = store.next_gen()
        data = page(g + fill)
        pages.append(data)
        rows.append(Row(g, gen, s, checksum(g, gen, data)))
    return rows, pages


async def put(store: PageStore, gfns: list[int], fill: int = 0) -> list[Row]:
    """A page-out batch's disk phase: reserve, then one persist (write, sync, mirror)."""
    rows, pages = new_rows(store, gfns, fill)
    await store.persist(rows, pages)
    return rows


async def free(store: PageStore, keys: list[tuple[int, int]]) -> None:
    await store.delete_rows(keys)


async def test_roundtrip_and_reopen(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    assert await store.bind_instance("A") == "new"
    rows = await put(store, [5, 9, 1000])
    assert await store.read_slots(rows) == [page(5), page(9), page(1000)]
    await store.close()
    again = await open_store(tmp_path)
    assert await again.bind_instance("A") == "same"
    assert again.rows == {r.gfn: r for r in rows}
    assert await again.read_slots(rows) == [page(5), page(9), page(1000)]
    assert again.next_gen() > max(r.gen for r in rows)
    await again.close()


async def test_one_sync_per_page_out_batch() -> None:
    disk = MemDisk()
    store = await open_store(disk)
    await store.bind_instance("A")
    syncs = disk.syncs
    rows = await put(store, list(range(200)))  # two extents
    assert disk.syncs == syncs + 1
    await free(store, [(r.gfn, r.gen) for r in rows[:10]])
    assert disk.syncs == syncs + 2
    await store.close()


async def test_written_but_unsynced_slots_are_free_after_a_power_loss() -> None:
    disk = MemDisk()
    store = await open_store(disk)
    await store.bind_instance("A")
    kept = await put(store, [1])
    rows, pages = new_rows(store, [3, 4, 5])
    disk.crash_in(2)  # the pwritev runs, the sync does not
    with pytest.raises(PowerCut):
        await store.persist(rows, pages)
    disk.power_loss()
    again = await open_store(disk)
    assert again.rows == {1: kept[0]}
    more = await put(again, [3, 4, 5], fill=1)  # the lost batch's slots are reused
    assert await again.read_slots(more) == [page(4), page(5), page(6)]
    await again.close()


async def test_generations_identify_rows_not_slots(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    (old,) = await put(store, [3])
    (new,) = await put(store, [3], fill=1)  # paged out again before the free came
    assert store.rows[3] == new and new.gen > old.gen
    await free(store, [(3, old.gen)])  # the stale free: a no-op
    assert store.rows[3] == new
    assert await store.read_slots([new]) == [page(4)]
    await store.close()
    again = await open_store(tmp_path)  # two records of gfn 3 on disk? the newer wins
    assert again.rows == {3: new}
    await free(again, [(3, new.gen)])
    assert 3 not in again.rows
    await again.close()


async def test_a_stale_record_of_a_gfn_loses_to_the_newer_generation() -> None:
    """A record for gfn 3 left in another extent (the newer copy's write did not reach the
    old extent's header): recovery keeps the higher generation and frees the old slot."""
    disk = MemDisk()
    store = await open_store(disk)
    (old,) = await put(store, [3])
    await put(store, list(range(100, 227)))  # fill extent 0
    header0 = bytes(disk.path_bytes(PAGES)[:PAGE_SIZE])
    (new,) = await put(store, [3], fill=1)
    assert new.slot >= 128  # in extent 1; extent 0's header still names the old copy:
    data = disk.path_bytes(PAGES)
    disk.set_bytes(PAGES, header0 + bytes(data[PAGE_SIZE:]))
    await store.close()
    again = await open_store(disk)
    assert again.rows[3] == new
    assert await again.read_slots([new]) == [page(4)]
    assert old.slot in again.slots._free
    await again.close()


async def test_reads_verify_gfn_generation_and_data(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    a, b = await put(store, [1, 2])
    wrong = Row(a.gfn, a.gen, b.slot, a.crc)  # another gfn's slot
    assert isinstance((await store.read_slots([wrong]))[0], StoreError)
    stale = Row(a.gfn, a.gen, a.slot, a.crc)
    assert (await store.read_slots([stale]))[0] == page(1)
    bumped = Row(a.gfn, a.gen + 1, a.slot, a.crc)
    assert isinstance((await store.read_slots([bumped]))[0], StoreError)
    await store.close()


async def test_a_row_naming_a_named_slot_is_refused(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    (a,) = await put(store, [1])
    clash = Row(2, store.next_gen(), a.slot, 0)
    with pytest.raises(StoreError):
        await store.persist([clash], [page(2)])
    trailer = Row(3, store.next_gen(), 15, 0)  # the number of a sector trailer, not a slot
    with pytest.raises(StoreError):
        await store.persist([trailer], [page(3)])
    assert store.rows == {1: a}
    await store.close()


async def test_pinned_slot_is_not_reused(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    (row,) = await put(store, [1])
    store.pin([row])
    await free(store, [(1, row.gen)])
    assert store.free_slots == 0  # a reader still holds it
    store.unpin([row])
    assert store.free_slots == 1
    await store.close()


async def test_noncontiguous_slots_are_written_where_they_belong(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    rows = await put(store, list(range(6)))
    await free(store, [(1, rows[1].gen), (4, rows[4].gen)])
    more = await put(store, [10, 11, 12], fill=3)
    assert sorted(r.slot for r in more) == [1, 4, 6]
    assert await store.read_slots(more) == [page(13), page(14), page(15)]
    assert await store.read_slots([rows[0], rows[5]]) == [page(0), page(5)]
    await store.close()
    again = await open_store(tmp_path)
    assert again.rows == {r.gfn: r for r in [rows[0], rows[2], rows[3], rows[5], *more]}
    await again.close()


async def test_one_process_per_store(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    with pytest.raises(StoreLocked):
        await open_store(tmp_path)
    await store.abandon()  # the kernel drops a dead holder's lock
    await (await open_store(tmp_path)).close()


async def test_store_of_another_instance_is_set_aside(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.bind_instance("old")
    await put(store, [1, 2, 3])
    await store.close()
    store = await open_store(tmp_path)
    assert await store.bind_instance("new") == "set_aside"
    assert store.rows == {}
    assert store.instance == "new"
    aside = [p for p in entries(tmp_path) if p.name.startswith("aside-old-")]
    assert len(aside) == 1 and (aside[0] / PAGES).exists()
    await store.close()
    store = await open_store(tmp_path)
    assert await store.bind_instance("new") == "same" and store.rows == {}
    await store.close()


async def test_empty_store_of_another_instance_is_reset_not_set_aside(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.bind_instance("old")
    rows = await put(store, [1, 2, 3])
    await free(store, [(r.gfn, r.gen) for r in rows])  # every page came back in
    await store.close()
    assert (tmp_path / PAGES).stat().st_size > 0
    store = await open_store(tmp_path)
    assert store.rows == {} and store.instance == "old"
    assert await store.bind_instance("new") == "new"
    assert store.instance == "new"
    assert not [p for p in entries(tmp_path) if p.name.startswith("aside-")]
    assert (tmp_path / PAGES).stat().st_size == 0
    await store.close()


async def test_a_lost_meta_file_loses_nothing(tmp_path: Path) -> None:
    """The records carry the instance's tag: without meta.json the store is still "same"
    for its instance, and set aside for another."""
    store = await open_store(tmp_path)
    await store.bind_instance("A")
    rows = await put(store, [1, 2])
    await store.close()
    (tmp_path / META).unlink()
    again = await open_store(tmp_path)
    assert await again.bind_instance("A") == "same"
    assert await again.read_slots(rows) == [page(1), page(2)]
    await again.close()
    (tmp_path / META).write_text("{not json")
    other = await open_store(tmp_path)
    assert await other.bind_instance("B") == "set_aside"
    await other.close()


@pytest.mark.parametrize(
    ("spec", "code"),
    [("store.write=ENOSPC@1", errno.ENOSPC), ("store.fsync=EIO@1", errno.EIO)],
)
async def test_injected_write_faults(tmp_path: Path, spec: str, code: int) -> None:
    store = await open_store(tmp_path, spec)
    with pytest.raises(StoreError) as info:
        await put(store, [1])
    assert info.value.errno == code
    assert info.value.full == (code == errno.ENOSPC)
    assert store.rows == {}
    await store.close()


async def test_a_failed_phase_changes_nothing_and_the_next_one_rewrites_it(
    tmp_path: Path,
) -> None:
    """A page-out's phase may carry the frees of paged-in copies: when its sync fails,
    neither the rows nor the frees happened in memory, and the next phase rewrites the
    header pages from memory (the failed phase's records may have reached the file)."""
    store = await open_store(tmp_path, "store.commit=EIO@3")
    (a,) = await put(store, [1])
    (b,) = await put(store, [2])
    rows, pages = new_rows(store, [3])
    with pytest.raises(StoreError):  # the third sync fails
        await store.persist(rows, pages, [(a.gfn, a.gen)])
    assert store.rows == {1: a, 2: b}
    store.release([r.slot for r in rows])
    (c,) = await put(store, [4])
    await store.close()
    again = await open_store(tmp_path)
    assert again.rows == {1: a, 2: b, 4: c}
    await free(again, [(a.gfn, a.gen), (b.gfn, b.gen + 1)])  # b: a newer gen only
    assert again.rows == {2: b, 4: c}
    await again.close()
    last = await open_store(tmp_path)
    assert last.rows == {2: b, 4: c}
    assert await last.read_slots([b, c]) == [page(2), page(4)]
    await last.close()


async def test_corrupt_read_fault_is_caught_by_the_checksum(tmp_path: Path) -> None:
    store = await open_store(tmp_path, "store.read=corrupt@1")
    rows = await put(store, [1])
    assert isinstance((await store.read_slots(rows))[0], StoreError)
    assert await store.read_slots(rows) == [page(1)]  # the fault was on the way in
    await store.close()


async def test_a_key_freed_twice_in_one_phase_is_freed_once(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    a, b = await put(store, [1, 2])
    await free(store, [(1, a.gen), (1, a.gen), (2, b.gen)])
    assert store.rows == {} and store.free_slots == 2
    await store.close()


async def test_gfns_past_32_bits_are_stored_and_found(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    rows = await put(store, [(1 << 40) + 3, 5])
    await store.close()
    again = await open_store(tmp_path)
    assert again.rows == {r.gfn: r for r in rows}
    assert await again.read_slots(rows) == [page((1 << 40) + 3), page(5)]
    await free(again, [(rows[0].gfn, rows[0].gen)])
    assert again.free_slots == 1
    await again.close()


async def test_the_lock_is_waited_for_in_trio_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A minute's wait for a held lock passes in no real time under a mock clock: the
    wait is trio's (no time.sleep, no time.monotonic), and bounded."""
    store = await open_store(tmp_path)
    start = trio.current_time()
    with pytest.raises(StoreLocked):
        await PageStore.open(RealDisk(tmp_path), lock_wait=60)
    assert trio.current_time() - start >= 60
    await store.close()
