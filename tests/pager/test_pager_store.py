"""The paging store on its own: durability rules, slot reuse, generations, faults, lock."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import structlog.testing

from pager import PageStore, Row, StoreError, StoreLocked, checksum, parse_faults
from pager.store import FaultyDiskIO
from protocol import PAGE_SIZE


def page(n: int) -> bytes:
    return bytes([n % 251]) * PAGE_SIZE


def open_store(path: Path, **kw: object) -> PageStore:
    return PageStore.open(path, lock_timeout=0.2, **kw)  # type: ignore[arg-type]


def put(store: PageStore, gfns: list[int], fill: int = 0) -> list[Row]:
    """Page-out order: reserve, write, sync, commit, mirror."""
    slots = store.reserve(len(gfns))
    rows = []
    pages = []
    for g, s in zip(gfns, slots, strict=True):
        gen = store.next_gen()
        data = page(g + fill)
        pages.append(data)
        rows.append(Row(g, gen, s, checksum(g, gen, data)))
    store.write_slots(slots, pages)
    store.sync_slots()
    store.commit_rows_sync(rows)
    store.applied_commit(rows)
    return rows


def free(store: PageStore, keys: list[tuple[int, int]]) -> None:
    todo = store.to_delete(keys)
    store.delete_rows_sync(todo)
    store.applied_delete(todo)


def test_roundtrip_and_reopen(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    assert store.bind_instance("A") == "new"
    rows = put(store, [5, 9, 1000])
    assert store.read_slots(rows) == [page(5), page(9), page(1000)]
    store.close()
    again = open_store(tmp_path)
    assert again.bind_instance("A") == "same"
    assert again.rows == {r.gfn: r for r in rows}
    assert again.read_slots(rows) == [page(5), page(9), page(1000)]
    assert again.next_gen() > max(r.gen for r in rows)
    again.close()


def test_uncommitted_slots_are_free_after_a_crash(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    put(store, [1, 2])
    slots = store.reserve(3)
    store.write_slots(slots, [page(7)] * 3)
    store.sync_slots()
    store.abandon()  # died before the commit
    again = open_store(tmp_path)
    assert set(again.rows) == {1, 2}
    assert again.free_slots == 3  # derived from the index: no row names them
    again.close()


def test_rows_are_identified_by_generation(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    (old,) = put(store, [3])
    (new,) = put(store, [3], fill=1)  # paged out again: a new generation replaces the row
    assert store.rows[3] == new and new.gen > old.gen
    assert store.free_slots == 1  # the old slot, once the replacement was durable
    free(store, [(3, old.gen)])  # a late free of the old copy must not drop the new one
    assert store.rows[3] == new
    assert store.read_slots([new]) == [page(4)]
    free(store, [(3, new.gen)])
    assert 3 not in store.rows
    store.close()
    again = open_store(tmp_path)
    assert again.rows == {}
    again.close()


def test_checksum_covers_gfn_and_generation(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    (a,) = put(store, [1])
    (b,) = put(store, [2])
    # A row pointing at another gfn's slot (a reuse bug) fails verification.
    wrong = Row(a.gfn, a.gen, b.slot, a.crc)
    assert isinstance(store.read_slots([wrong])[0], StoreError)
    stale = Row(a.gfn, a.gen + 1, a.slot, checksum(a.gfn, a.gen + 1, page(1)))
    assert store.read_slots([stale])[0] == page(1)
    assert isinstance(store.read_slots([Row(a.gfn, a.gen + 1, a.slot, a.crc)])[0], StoreError)
    store.close()


def test_a_slot_named_by_a_row_is_never_named_again(tmp_path: Path) -> None:
    """A bookkeeping bug handing out a slot that a durable row names would overwrite that
    page: the commit is refused (nothing committed, so the batch is never evicted)."""
    store = open_store(tmp_path)
    (a,) = put(store, [1])
    data = page(2)
    gen = store.next_gen()
    clash = Row(2, gen, a.slot, checksum(2, gen, data))
    with pytest.raises(StoreError, match="named by a row already"):
        store.commit_rows_sync([clash])
    store.close()
    again = open_store(tmp_path)
    assert again.rows == {1: a}
    assert again.read_slots([a]) == [page(1)]
    # Once the row is gone (durably), its slot may be named again.
    free(again, [(1, a.gen)])
    again.commit_rows_sync([clash])
    again.applied_commit([clash])
    again.close()


def test_an_index_naming_a_slot_twice_is_reported_and_verified(tmp_path: Path) -> None:
    """Written by no version of the store, but a damaged index may hold it: opening says
    so loudly, and the copy that is not in the slot fails its checksum."""
    store = open_store(tmp_path)
    (a,) = put(store, [1])
    assert store._db is not None
    store._db.execute("INSERT INTO pages VALUES (2, 99, ?, 0)", (a.slot,))
    store.close()
    with structlog.testing.capture_logs() as logs:
        again = open_store(tmp_path)
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["store.slot_named_twice"]
    assert again.read_slots([a]) == [page(1)]
    assert isinstance(again.read_slots([again.rows[2]])[0], StoreError)
    again.close()


def test_pinned_slot_is_not_reused(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    (row,) = put(store, [1])
    store.pin([row])
    free(store, [(1, row.gen)])
    assert store.free_slots == 0  # a reader still holds it
    store.unpin([row])
    assert store.free_slots == 1
    store.close()


def test_noncontiguous_slots_are_written_where_they_belong(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    rows = put(store, list(range(6)))
    free(store, [(1, rows[1].gen), (4, rows[4].gen)])
    more = put(store, [10, 11, 12], fill=3)
    assert sorted(r.slot for r in more) == [1, 4, 6]
    assert store.read_slots(more) == [page(13), page(14), page(15)]
    assert store.read_slots([rows[0], rows[5]]) == [page(0), page(5)]
    store.close()


def test_one_process_per_store(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    with pytest.raises(StoreLocked):
        open_store(tmp_path)
    store.abandon()  # the kernel drops a dead holder's lock
    open_store(tmp_path).close()


def test_store_of_another_instance_is_set_aside(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.bind_instance("old")
    put(store, [1, 2, 3])
    store.close()
    store = open_store(tmp_path)
    assert store.bind_instance("new") == "set_aside"
    assert store.rows == {}
    assert store.instance == "new"
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("aside-old-")]
    assert len(aside) == 1 and (aside[0] / "index.sqlite").exists()
    store.close()
    store = open_store(tmp_path)
    assert store.bind_instance("new") == "same" and store.rows == {}
    store.close()


def test_empty_store_of_another_instance_is_reset_not_set_aside(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.bind_instance("old")
    rows = put(store, [1, 2, 3])
    # Every page came back in: the rows are freed, the pages file keeps its size.
    keys = [(r.gfn, r.gen) for r in rows]
    store.delete_rows_sync(keys)
    store.applied_delete(keys)
    store.close()
    assert (tmp_path / "pages.bin").stat().st_size > 0
    store = open_store(tmp_path)
    assert store.rows == {} and store.instance == "old"
    assert store.bind_instance("new") == "new"
    assert store.instance == "new"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("aside-")]
    assert (tmp_path / "pages.bin").stat().st_size == 0
    store.close()


@pytest.mark.parametrize(
    ("spec", "code"),
    [("store.write=ENOSPC@1", errno.ENOSPC), ("store.fsync=EIO@1", errno.EIO)],
)
def test_injected_write_faults(tmp_path: Path, spec: str, code: int) -> None:
    store = open_store(tmp_path, io=FaultyDiskIO(parse_faults(spec)))
    with pytest.raises(StoreError) as info:
        put(store, [1])
    assert info.value.errno == code
    assert info.value.full == (code == errno.ENOSPC)
    assert store.rows == {}
    store.close()


def test_rows_and_deletions_commit_together(tmp_path: Path) -> None:
    """A page-out's commit may carry the deletion of paged-in copies' rows: one
    transaction, so either both happened or, when the commit fails, neither."""

    def new_row(store: PageStore, gfn: int) -> Row:
        slots = store.reserve(1)
        gen = store.next_gen()
        store.write_slots(slots, [page(gfn)])
        store.sync_slots()
        return Row(gfn, gen, slots[0], checksum(gfn, gen, page(gfn)))

    store = open_store(tmp_path, io=FaultyDiskIO(parse_faults("store.commit=EIO@3")))
    (a,) = put(store, [1])
    (b,) = put(store, [2])
    with pytest.raises(StoreError):  # the third commit fails
        store.commit_rows_sync([new_row(store, 3)], [(a.gfn, a.gen)])
    store.close()
    again = open_store(tmp_path)
    assert again.rows == {1: a, 2: b}  # neither the row nor the deletion
    c = new_row(again, 3)
    again.commit_rows_sync([c], [(a.gfn, a.gen), (b.gfn, b.gen + 1)])  # b: a newer gen only
    again.applied_commit([c])
    again.applied_delete(again.to_delete([(a.gfn, a.gen)]))
    assert again.rows == {2: b, 3: c}
    again.close()
    last = open_store(tmp_path)
    assert last.rows == {2: b, 3: c}
    assert last.read_slots([b, c]) == [page(2), page(3)]
    last.close()


def test_failed_commit_leaves_no_row(tmp_path: Path) -> None:
    store = open_store(tmp_path, io=FaultyDiskIO(parse_faults("store.commit=EIO@1")))
    with pytest.raises(StoreError):
        put(store, [1])
    store.close()
    again = open_store(tmp_path)
    assert again.rows == {}
    again.close()


def test_corrupt_read_fault_is_caught_by_the_checksum(tmp_path: Path) -> None:
    store = open_store(tmp_path, io=FaultyDiskIO(parse_faults("store.read=corrupt@1")))
    rows = put(store, [1])
    assert isinstance(store.read_slots(rows)[0], StoreError)
    assert store.read_slots(rows) == [page(1)]  # the fault was on the way in, not on disk
    store.close()
