"""One-time migration of a store of the previous format (pages.bin + index.sqlite).

The previous store kept its rows in SQLite (``pages(gfn, gen, slot, crc)``, ``meta(key,
value)``) and slot i of ``pages.bin`` at offset i * 4096. On open, if ``index.sqlite`` is
there, every row's slot is copied as it is, with its crc, into a new pages file (so a copy
that failed its checksum before fails it after: nothing is made up, nothing dropped),
synced, meta.json written, the new file renamed into place, then the old files removed.
A crash at any step leaves the old files whole, and the next open starts over.

This is the only place the pager reads SQLite: the index files are copied through the
`Disk` into a private temporary directory and read there with `sqlite3`, once.
"""

from __future__ import annotations

import json
from itertools import count, islice
from pathlib import Path
from typing import Any, Final

import structlog

from .disk import Disk
from .store_format import (
    EXTENT_DATA,
    EXTENT_SLOTS,
    FREE_RECORD,
    SLOT_SIZE,
    encode,
    header_offset,
    header_page,
    instance_tag,
    is_slot,
    slot_offset,
)

log = structlog.get_logger("pager.migrate")

OLD_INDEX: Final = "index.sqlite"
OLD_PAGES: Final = "pages.bin"
_OLD_FILES: Final = (OLD_PAGES, OLD_INDEX, OLD_INDEX + "-wal", OLD_INDEX + "-shm")
_CHUNK: Final = 8 * EXTENT_DATA  # rows copied per read and write: whole extents


async def _read_whole(disk: Disk, name: str) -> bytes:
    f = await disk.open(name)
    try:
        size = await f.size()
        return await f.pread(size, 0) if size else b""
    finally:
        await f.close()


async def read_old_index(disk: Disk) -> tuple[dict[str, Any], list[tuple[int, int, int, int]]]:
    """The old index's meta and its rows (gfn, gen, slot, crc), read once."""
    import sqlite3  # here only: a pager that never migrates never loads it
    import tempfile

    with tempfile.TemporaryDirectory(prefix="xpemu-migrate-") as tmp:
        for name in (OLD_INDEX, OLD_INDEX + "-wal"):
            if await disk.exists(name):
                (Path(tmp) / name).write_bytes(await _read_whole(disk, name))
        db = sqlite3.connect(Path(tmp) / OLD_INDEX)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            meta = dict(db.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
            rows = (
                list(db.execute("SELECT gfn, gen, slot, crc FROM pages ORDER BY gfn"))
                if "pages" in tables
                else []
            )
        finally:
            db.close()
    return meta, rows


async def migrate_if_needed(disk: Disk, pages_name: str, meta_name: str) -> bool:
    """Migrate a store of the previous format on `disk` into `pages_name` + `meta_name`;
    False if there is none."""
    if not await disk.exists(OLD_INDEX):
        return False
    meta, rows = await read_old_index(disk)
    instance = meta.get("instance")
    tag = instance_tag(instance) if isinstance(instance, str) else 0
    tmp_name = pages_name + ".migrating"
    new = await disk.open(tmp_name, create=True)
    old = await disk.open(OLD_PAGES) if await disk.exists(OLD_PAGES) else None
    unreadable = 0
    slots = list(islice(filter(is_slot, count()), len(rows)))
    try:
        await new.truncate(0)
        for start in range(0, len(rows), _CHUNK):  # whole extents per chunk
            chunk = rows[start : start + _CHUNK]
            if old is not None:
                datas = await old.preadv([(SLOT_SIZE, slot * SLOT_SIZE) for _, _, slot, _ in chunk])
            else:
                datas = [OSError("pages.bin is missing")] * len(chunk)
            writes: list[tuple[int, bytes]] = []
            entries: dict[int, list[bytes]] = {}
            for (gfn, gen, _, crc), data, slot in zip(chunk, datas, slots[start:], strict=False):
                e, k = divmod(slot, EXTENT_SLOTS)
                records = entries.setdefault(e, [FREE_RECORD] * EXTENT_SLOTS)
                if isinstance(data, OSError) or len(data) != SLOT_SIZE:
                    unreadable += 1  # no bytes to copy: the reconcile reports the gfn lost
                    continue
                records[k] = encode(slot, tag, gfn, gen, crc)
                writes.append((slot_offset(slot), data))
            writes += [(header_offset(e), bytes(header_page(e, r))) for e, r in entries.items()]
            await new.pwritev(writes)
        await new.sync()
    finally:
        await new.close()
        if old is not None:
            await old.close()
    next_gen = max([int(meta.get("next_gen", 1))] + [gen + 1 for _, gen, _, _ in rows])
    body = json.dumps({"format": 2, "instance": instance, "next_gen": next_gen}).encode()
    mf = await disk.open(meta_name + ".tmp", create=True)
    try:
        await mf.truncate(0)
        await mf.pwritev([(0, body)])
        await mf.sync()
    finally:
        await mf.close()
    await disk.rename(meta_name + ".tmp", meta_name)
    await disk.rename(tmp_name, pages_name)
    await disk.sync_dir()
    # The index first, durably: without it no later open migrates again (from a pages.bin
    # that may be gone by then).
    for names in (_OLD_FILES[1:], _OLD_FILES[:1]):
        for name in names:
            if await disk.exists(name):
                await disk.remove(name)
        await disk.sync_dir()
    log.warning(
        "store.migrated", rows=len(rows) - unreadable, unreadable=unreadable, instance=instance
    )
    return True
