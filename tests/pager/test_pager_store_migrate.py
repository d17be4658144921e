"""A store of the previous format (pages.bin + index.sqlite, as the pager wrote it up to
this change) is migrated on open with nothing lost, and a crash during the migration
loses nothing either."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
from pathlib import Path

import pytest
from memdisk import MemDisk, PowerCut

from pager import ChecksumError, PageStore, RealDisk, checksum
from pager.store import PAGES
from protocol import PAGE_SIZE

ROWS = 300


def _old_format_store(state: Path, instance: str) -> dict[int, tuple[int, bytes]]:
    """A frozen copy of the previous store's writer: WAL index, synchronous=FULL, the same
    tables; slot i of pages.bin at i * 4096. Left as a killed writer leaves it (the WAL
    not checkpointed). Returns gfn -> (gen, bytes)."""
    state.mkdir()
    live = state / "live"
    live.mkdir()
    db = sqlite3.connect(live / "index.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value ANY) STRICT")
    db.execute(
        "CREATE TABLE pages (gfn INTEGER PRIMARY KEY, gen INTEGER NOT NULL,"
        " slot INTEGER NOT NULL, crc INTEGER NOT NULL) STRICT"
    )
    rng = random.Random(5)
    slots = rng.sample(range(ROWS + 40), ROWS)  # slots reused out of order, some free
    out: dict[int, tuple[int, bytes]] = {}
    with open(live / "pages.bin", "wb") as pages:
        for i, slot in enumerate(slots):
            gfn, gen = i * 3 + 1, 1000 + i
            data = rng.randbytes(PAGE_SIZE)
            pages.seek(slot * PAGE_SIZE)
            pages.write(data)
            out[gfn] = (gen, data)
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO pages VALUES (?, ?, ?, ?)", (gfn, gen, slot, checksum(gfn, gen, data))
            )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('next_gen', ?)", (1000 + ROWS + 7,))
            db.execute("COMMIT")
    db.execute("INSERT OR REPLACE INTO meta VALUES ('instance', ?)", (instance,))
    db.execute("INSERT OR REPLACE INTO meta VALUES ('format', 1)")
    for name in os.listdir(live):  # copied while the writer still has it open
        shutil.copy(live / name, state / name)
    db.close()
    shutil.rmtree(live)
    assert (state / "index.sqlite-wal").exists()
    return out


async def test_a_store_of_the_previous_format_is_migrated_with_nothing_lost(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    old = _old_format_store(state, "inst-1")
    store = await PageStore.open(RealDisk(state), lock_wait=1)
    assert {g: r.gen for g, r in store.rows.items()} == {g: gen for g, (gen, _) in old.items()}
    rows = list(store.rows.values())
    assert await store.read_slots(rows) == [old[r.gfn][1] for r in rows]
    assert store.next_gen() == 1000 + ROWS + 7
    assert await store.bind_instance("inst-1") == "same"
    await store.close()
    assert sorted(os.listdir(state)) == ["lock", "meta.json", PAGES]
    again = await PageStore.open(RealDisk(state), lock_wait=1)  # and it stays migrated
    assert len(again.rows) == ROWS
    await again.close()


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


async def test_a_copy_that_failed_its_checksum_before_fails_it_after(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = _old_format_store(state, "inst-1")
    db = sqlite3.connect(state / "index.sqlite")
    (slot,) = db.execute("SELECT slot FROM pages WHERE gfn = 1").fetchone()
    db.close()
    _flip(state / "pages.bin", slot * PAGE_SIZE + 7)
    store = await PageStore.open(RealDisk(state), lock_wait=1)
    assert len(store.rows) == ROWS
    got = await store.read_slots([store.rows[1], store.rows[4]])
    assert isinstance(got[0], ChecksumError) and got[1] == old[4][1]
    await store.close()


@pytest.mark.parametrize("keep", [False, True])
async def test_a_power_loss_during_the_migration_loses_nothing(tmp_path: Path, keep: bool) -> None:
    state = tmp_path / "state"
    old = _old_format_store(state, "inst-1")
    files = {name: (state / name).read_bytes() for name in os.listdir(state)}
    ops = 0
    while True:
        ops += 1
        disk = MemDisk()
        for name, data in files.items():
            await (await disk.open(name, create=True)).pwritev([(0, data)])
            disk.set_bytes(name, data)
        await disk.sync_dir()
        disk.crash_in(ops)
        try:
            store = await PageStore.open(disk, lock_wait=0)
        except PowerCut:
            disk.power_loss(random.Random(ops) if keep else None)
            store = await PageStore.open(disk, lock_wait=0)
            finished = False
        else:
            finished = True  # the whole migration ran with fewer operations
            disk.crash_in(None)
        rows = list(store.rows.values())
        assert {r.gfn for r in rows} == set(old), f"crash at operation {ops}"
        assert await store.read_slots(rows) == [old[r.gfn][1] for r in rows]
        await store.abandon()
        if finished:
            break
    assert ops > 10  # the crash points did cover the migration's steps
