"""Reading a store back at open: the pages file's header pages into the in-memory index,
and meta.json; and moving a store's files aside (pager/store.py uses them)."""

from __future__ import annotations

import json
import operator
from array import array
from dataclasses import dataclass, field
from itertools import compress
from typing import Any, Final

import structlog

from .disk import Disk, DiskFile
from .rowindex import RowIndex, key_runs, scatter
from .store_format import (
    SECTOR_RECORDS,
    SLOT_SIZE,
    Columns,
    extents_in,
    header_offset,
    parse_headers,
    slots_in,
)

log = structlog.get_logger("pager.store")

#: Version of meta.json's format.
FORMAT: Final = 2

#: Header pages read per `preadv` at open (a few worker thread trips, few objects at once).
HEADER_READS: Final = 128

#: gfns at or above this do not fit the slot -> gfn array (4 bytes): kept in a dict.
BIG_GFN: Final = (1 << 32) - 1


def data_index(slot: int) -> int:
    """The slot's place among data slots (slot numbers skip each sector's trailer)."""
    return slot - slot // (SECTOR_RECORDS + 1)


@dataclass
class Loaded:
    """What a pages file says, as the store keeps it in memory."""

    rows: RowIndex = field(default_factory=RowIndex)
    slot_gfn: array[int] = field(default_factory=lambda: array("I"))  # by data_index: gfn+1
    slot_big: dict[int, int] = field(default_factory=dict)  # slot -> gfn >= BIG_GFN
    free: array[int] = field(default_factory=lambda: array("I"))  # slots no row names
    high: int = 0  # slot numbers below this lie whole in the file
    tags: set[int] = field(default_factory=set)
    max_gen: int = 0
    lost_records: int = 0  # damaged records (their gfns are reported lost by the reconcile)


async def load_pages(pages: DiskFile) -> Loaded:
    """Read every header page of `pages` (OSError if that fails) and build the index."""
    size = await pages.size()
    n_ext = extents_in(size)
    headers: list[bytes | OSError] = []
    for start in range(0, n_ext, HEADER_READS):
        top = min(n_ext, start + HEADER_READS)
        headers += await pages.preadv([(SLOT_SIZE, header_offset(e)) for e in range(start, top)])
    out = Loaded(high=slots_in(size))
    unreadable = sum(isinstance(p, OSError) for p in headers)
    if unreadable:  # their slots' gfns are reported lost by the reconcile
        log.error("store.headers_unreadable", extents=unreadable)
    cols, out.lost_records = parse_headers([None if isinstance(p, OSError) else p for p in headers])
    headers.clear()
    if out.lost_records:
        log.error("store.records_damaged", records=out.lost_records)
    out.max_gen = max(cols.gens, default=0)
    out.tags = cols.tags
    rows = cols.gfns, cols.gens, cols.slots, cols.crcs
    try:
        if cols.slots and cols.slots[-1] >= out.high:
            raise ValueError("a record names a slot past the end of the file")
        out.rows = RowIndex.from_columns(*rows)
    except ValueError:
        rows = _newest(cols, out.high)
        out.rows = RowIndex.from_columns(*rows)
    slot_gfn = out.slot_gfn = array("I", [0]) * data_index(out.high)
    gfns, _, slots, _ = rows
    if gfns and max(gfns) < BIG_GFN:
        data = list(map(operator.sub, slots, map((SECTOR_RECORDS + 1).__rfloordiv__, slots)))
        scatter(slot_gfn, data, list(map((1).__add__, gfns)), key_runs(data))
    else:
        for gfn, slot in zip(gfns, slots, strict=True):
            if gfn < BIG_GFN:
                slot_gfn[data_index(slot)] = gfn + 1
            else:
                out.slot_big[slot] = gfn
    unnamed = compress(range(len(slot_gfn) - 1, -1, -1), map(operator.not_, reversed(slot_gfn)))
    free = (d + d // SECTOR_RECORDS for d in unnamed)  # data index -> slot number
    out.free = array("I", (s for s in free if s not in out.slot_big))
    return out


def _newest(cols: Columns, high: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """One row per gfn, the highest generation's, from slots below `high` (a slot past the
    end of the file has no data: its gfn is lost), as (gfns, gens, slots, crcs)."""
    best: dict[int, tuple[int, int, int]] = {}
    for gfn, gen, slot, crc in zip(cols.gfns, cols.gens, cols.slots, cols.crcs, strict=True):
        if slot < high and (gfn not in best or gen > best[gfn][0]):
            best[gfn] = (gen, slot, crc)
    return (
        list(best),
        [v[0] for v in best.values()],
        [v[1] for v in best.values()],
        [v[2] for v in best.values()],
    )


async def read_meta(disk: Disk, name: str) -> dict[str, Any]:
    """meta.json's contents; {} if it is missing or damaged (the records carry what
    matters: tags and generations)."""
    try:
        f = await disk.open(name)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.error("store.meta_unreadable", error=str(exc))
        return {}
    try:
        data = await f.pread(1 << 16, 0)
    except OSError as exc:
        log.error("store.meta_unreadable", error=str(exc))
        return {}
    finally:
        await f.close()
    try:
        meta = json.loads(data)
        if not isinstance(meta, dict) or not isinstance(meta.get("instance"), str | None):
            raise ValueError("not a meta object")
        int(meta.get("next_gen", 1))
    except ValueError as exc:
        log.error("store.meta_damaged", error=str(exc))
        return {}
    return meta


async def write_meta(disk: Disk, name: str, instance: str | None, next_gen: int) -> None:
    """Replace meta.json whole: a temporary file, synced, renamed, the directory synced."""
    body = json.dumps({"format": FORMAT, "instance": instance, "next_gen": next_gen}).encode()
    tmp = name + ".tmp"
    f = await disk.open(tmp, create=True)
    try:
        await f.truncate(0)
        await f.pwritev([(0, body)])
        await f.sync()
    finally:
        await f.close()
    await disk.rename(tmp, name)
    await disk.sync_dir()


async def move_aside(disk: Disk, names: tuple[str, ...], instance: str | None) -> str | None:
    """Move the files `names` into a new ``aside-<instance>-<n>/`` (or, with `instance`
    None, delete them), durably; the directory's name, or None."""
    aside = None
    if instance is not None:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in instance)[:64]
        taken = set(await disk.listdir())
        n = 1
        while f"aside-{safe}-{n}" in taken:
            n += 1
        aside = f"aside-{safe}-{n}"
        await disk.mkdir(aside)
    for name in names:
        try:
            if aside is None:
                await disk.remove(name)
            else:
                await disk.rename(name, f"{aside}/{name}")
        except FileNotFoundError:
            pass
    if aside is not None:
        await disk.sync_dir(aside)
    await disk.sync_dir()
    return aside
