"""Page-cache reads without a worker thread (`read_slots_cached`): the same bytes and the
same verdicts as `read_slots`, and never used when a DiskIO subclass owns `pread`."""

from __future__ import annotations

from pathlib import Path

from pager import ChecksumError, DiskIO, PageStore, Row, checksum


def _store_with_rows(path: Path, io: DiskIO | None = None) -> tuple[PageStore, list[Row]]:
    store = PageStore.open(path, io=io, lock_timeout=1)
    pages = [bytes([g]) * 4096 for g in range(8)]
    rows = [Row(g, g + 1, g, checksum(g, g + 1, pages[g])) for g in range(8)]
    store.write_slots([r.slot for r in rows], pages)
    store.sync_slots()
    store.commit_rows_sync(rows)
    store.applied_commit(rows)
    return store, rows


def test_cached_read_matches_the_thread_read(tmp_path: Path) -> None:
    store, rows = _store_with_rows(tmp_path)
    try:
        bad = Row(rows[0].gfn, rows[0].gen, rows[1].slot, rows[0].crc)  # another gfn's slot
        cached = store.read_slots_cached([*rows, bad])
        assert cached is not None  # just written: in the page cache
        assert cached[:8] == store.read_slots(rows) == [bytes([g]) * 4096 for g in range(8)]
        assert isinstance(cached[8], ChecksumError)
        past_end = Row(9, 10, 1000, 0)
        assert store.read_slots_cached([past_end]) is None  # short read: the thread decides
    finally:
        store.close()


def test_a_diskio_that_overrides_pread_sees_every_read(tmp_path: Path) -> None:
    class Counting(DiskIO):
        reads = 0

        def pread(self, fd: int, size: int, offset: int) -> bytes:
            Counting.reads += 1
            return super().pread(fd, size, offset)

    store, rows = _store_with_rows(tmp_path, Counting())
    try:
        assert store.read_slots_cached(rows) is None
        assert Counting.reads == 0
        store.read_slots(rows)
        assert Counting.reads == 8
    finally:
        store.close()
