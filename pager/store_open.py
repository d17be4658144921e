"""Reading a store back at open: the pages file's header pages into the in-memory index,
and meta.json; and moving a store's files aside (pager/store.py uses them)."""

from __future__ import annotations

import json
import re
from array import array
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
import trio

from .disk import Disk, DiskFile
from .rowindex import RowIndex
from .store_format import (
    SECTOR_RECORDS,
    SLOT_SIZE,
    Columns,
    extents_in,
    header_offset,
    parse_pages,
    slots_in,
)

log = structlog.get_logger("pager.store")

#: Version of meta.json's format.
FORMAT: Final = 2

#: Header pages read per `preadv` at open (a few worker thread trips, few objects at once).
HEADER_READS: Final = 128

#: Reads of a header page that fails with an error before the open gives it up: an extent
#: given up is rewritten empty and its gfns are reported lost (`HeaderPages.clear`), so a
#: passing EIO must not be taken for a dead sector. The pauses between them (trio time)
#: double from `HEADER_RETRY_S`: 0.05, 0.1 and 0.2 s (a page-in's slot read backs off
#: too: 0.1, 0.2, 0.4 s, `PagerConfig.read_attempts`).
HEADER_READ_ATTEMPTS: Final = 4
HEADER_RETRY_S: Final = 0.05

_ZERO: Final = re.compile(b"\x00")


@dataclass
class Loaded:
    """What a pages file says, as the store keeps it in memory."""

    rows: RowIndex = field(default_factory=RowIndex)
    used: bytearray = field(default_factory=bytearray)  # by slot: 1 if a row names it
    sealed: array[int] = field(default_factory=lambda: array("I"))  # by extent (store_headers)
    free: array[int] = field(default_factory=lambda: array("I"))  # slots no row names
    high: int = 0  # slot numbers below this lie whole in the file
    tags: set[int] = field(default_factory=set)
    max_gen: int = 0
    lost_records: int = 0  # damaged records (their gfns are reported lost by the reconcile)
    unreadable: list[int] = field(default_factory=list)  # extents whose header read failed


async def load_pages(pages: DiskFile) -> Loaded:
    """Read every header page of `pages` (OSError if that fails) and build the index."""
    size = await pages.size()
    n_ext = extents_in(size)
    headers: list[bytes | OSError] = []
    for start in range(0, n_ext, HEADER_READS):
        top = min(n_ext, start + HEADER_READS)
        headers += await pages.preadv([(SLOT_SIZE, header_offset(e)) for e in range(start, top)])
    await _read_again(pages, headers)
    out = Loaded(high=slots_in(size))
    out.unreadable = [e for e, p in enumerate(headers) if isinstance(p, OSError)]
    if out.unreadable:  # their slots' gfns are reported lost by the reconcile
        log.error("store.headers_unreadable", extents=len(out.unreadable), first=out.unreadable[:8])
    got = parse_pages([None if isinstance(p, OSError) else p for p in headers])
    headers.clear()
    cols, out.lost_records = got.cols, got.damaged
    if out.lost_records:
        log.error("store.records_damaged", records=out.lost_records)
    out.max_gen = max(cols.gens, default=0)
    out.tags = cols.tags
    rows = cols.gfns, cols.gens, cols.slots, cols.crcs
    try:
        if cols.slots and cols.slots[-1] >= out.high:
            raise ValueError("a record names a slot past the end of the file")
        out.rows = RowIndex.from_columns(*rows)
        # Every trusted record is a row: the slot map is the records' kind bytes, and each
        # page that verified whole is what the index would write there.
        out.used, out.sealed = bytearray(got.live), got.whole
    except ValueError:
        rows = _newest(cols, out.high)
        out.rows = RowIndex.from_columns(*rows)
        out.used = bytearray(len(got.live))
        for slot in rows[2]:
            out.used[slot] = 1
    # Free: every slot below `high` that no row names, but the sectors' trailer entries;
    # popped from the end, so the lowest slots are reused first.
    unnamed = (m.start() for m in _ZERO.finditer(out.used, 0, out.high))
    free = [s for s in unnamed if s % (SECTOR_RECORDS + 1) != SECTOR_RECORDS]
    free.reverse()
    out.free = array("I", free)
    return out


async def _read_again(pages: DiskFile, headers: list[bytes | OSError]) -> None:
    """Read the header pages whose read failed (`headers`, by extent) again, up to
    `HEADER_READ_ATTEMPTS` reads in all, backing off between rounds; those that still
    fail stay errors."""
    delay = HEADER_RETRY_S
    for _ in range(HEADER_READ_ATTEMPTS - 1):
        failed = [e for e, p in enumerate(headers) if isinstance(p, OSError)]
        if not failed:
            return
        log.warning(
            "store.header_read_failed",
            extents=len(failed),
            first=failed[:8],
            error=str(headers[failed[0]]),
            retry_in=delay,
        )
        await trio.sleep(delay)
        delay *= 2
        for start in range(0, len(failed), HEADER_READS):
            batch = failed[start : start + HEADER_READS]
            got = await pages.preadv([(SLOT_SIZE, header_offset(e)) for e in batch])
            for e, p in zip(batch, got, strict=True):
                headers[e] = p


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
