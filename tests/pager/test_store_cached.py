"""Page-cache reads without a worker thread (`read_slots_cached`): the same bytes and the
same verdicts as `read_slots`, and never used while read faults are armed (every read
then passes the fault wrapper)."""

from __future__ import annotations

from pathlib import Path

from pager import ChecksumError, PageStore, RealDisk, Row, StoreError, checksum, parse_faults
from pager.disk import Disk
from pager.store_faults import FaultyDisk


async def _store_with_rows(disk: Disk) -> tuple[PageStore, list[Row]]:
    store = await PageStore.open(disk, lock_wait=1)
    pages = [bytes([g]) * 4096 for g in range(8)]
    slots = store.reserve(8)
    rows = [Row(g, g + 1, slots[g], checksum(g, g + 1, pages[g])) for g in range(8)]
    await store.persist(rows, pages)
    return store, rows


async def test_cached_read_matches_the_thread_read(tmp_path: Path) -> None:
    store, rows = await _store_with_rows(RealDisk(tmp_path))
    try:
        bad = Row(rows[0].gfn, rows[0].gen, rows[1].slot, rows[0].crc)  # another gfn's slot
        cached = store.read_slots_cached([*rows, bad])
        assert cached is not None  # just written: in the page cache
        assert cached[:8] == await store.read_slots(rows) == [bytes([g]) * 4096 for g in range(8)]
        assert isinstance(cached[8], ChecksumError)
        past_end = Row(9, 10, 1000, 0)
        assert store.read_slots_cached([past_end]) is None  # short read: the thread decides
    finally:
        await store.close()


async def test_armed_read_faults_see_every_read(tmp_path: Path) -> None:
    faults = parse_faults("store.read=EIO@100")
    store, rows = await _store_with_rows(FaultyDisk(RealDisk(tmp_path), faults))
    try:
        assert store.read_slots_cached(rows) is None
        assert faults._store["read"][0].trigger.passes == 0
        await store.read_slots(rows)
        assert faults._store["read"][0].trigger.passes == 8
    finally:
        await store.close()


async def test_read_faults_count_slot_reads_not_the_header_pages(tmp_path: Path) -> None:
    store, rows = await _store_with_rows(RealDisk(tmp_path))
    await store.close()
    faults = parse_faults("store.read=EIO@1+")
    again = await PageStore.open(FaultyDisk(RealDisk(tmp_path), faults), lock_wait=1)
    try:
        assert again.rows == {r.gfn: r for r in rows}  # the header pages were read
        assert faults._store["read"][0].trigger.passes == 0
        assert all(isinstance(x, StoreError) for x in await again.read_slots(rows))
    finally:
        await again.close()


async def test_slots_next_to_each_other_are_read_in_one_call(tmp_path: Path) -> None:
    """A run of slots adjacent in the file is one `pread_cached` (a system call per run,
    not per slot), with each slot still verified on its own."""
    store, rows = await _store_with_rows(RealDisk(tmp_path))
    try:
        file = store._file
        assert file is not None
        calls: list[tuple[int, int]] = []
        read = file.pread_cached

        def counted(size: int, offset: int) -> bytes | None:
            calls.append((size, offset))
            return read(size, offset)

        file.pread_cached = counted  # type: ignore[method-assign]
        bad = Row(rows[3].gfn, rows[3].gen, rows[3].slot, rows[3].crc ^ 1)
        got = store.read_slots_cached([*rows[:3], bad, *rows[4:], rows[0]])
        assert got is not None
        assert got[:3] + got[4:8] == [bytes([g]) * 4096 for g in (0, 1, 2, 4, 5, 6, 7)]
        assert isinstance(got[3], ChecksumError) and got[8] == bytes(4096)
        assert [size for size, _ in calls] == [8 * 4096, 4096]  # the run, then slot 0 again
    finally:
        await store.close()
