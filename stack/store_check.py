"""Invariant 4 from outside the pager: read its store and hold it against hv's `audit`.

The store is read with the pager's own code (`pager.store.PageStore` over a `RealDisk`):
the rows its pages file describes, each copy verified against its checksum. This check
runs only while no pager owns the store: it takes the same lock the pager takes, so a
running pager makes it fail loudly instead of reading a moving target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from pager import PageStore, RealDisk, StoreError, StoreLocked
from pager.store import PAGES
from protocol import P2MType, bit

_FRAMELESS_PAGING = (P2MType.paged, P2MType.paging_in_start)


@dataclass
class StoreCheck:
    """What the store holds compared with hv's p2m table."""

    rows: int = 0
    frameless: int = 0  # gfns in a paging type without a frame: each needs one good copy
    missing: list[int] = field(default_factory=list)  # frameless gfns with no row
    bad_checksum: list[int] = field(default_factory=list)  # rows whose slot fails its crc
    resident_rows: list[int] = field(default_factory=list)  # rows naming a gfn with a frame
    error: str | None = None

    def violations(self, *, resident_rows_allowed: bool) -> list[str]:
        """Text for each broken rule (resident rows are stale but legal mid-run)."""
        out = []
        if self.error:
            out.append(f"store: {self.error}")
        if self.missing:
            out.append(
                f"store: {len(self.missing)} paged-out gfns have no copy: {self.missing[:10]}"
            )
        if self.bad_checksum:
            out.append(
                f"store: {len(self.bad_checksum)} copies fail their checksum: "
                f"{self.bad_checksum[:10]}"
            )
        if self.resident_rows and not resident_rows_allowed:
            out.append(
                f"store: {len(self.resident_rows)} rows left for resident gfns after page-in: "
                f"{self.resident_rows[:10]}"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (lists shortened)."""
        return {
            "rows": self.rows,
            "frameless": self.frameless,
            "missing": self.missing[:50],
            "bad_checksum": self.bad_checksum[:50],
            "resident_rows": len(self.resident_rows),
            "error": self.error,
        }


def check_store(state_dir: Path, types: bytes, frames: bytes) -> StoreCheck:
    """Compare the store in `state_dir` with an audit (`types`, `frames` bitmap) of every gfn
    (blocking: runs its own trio loop; call it from a worker thread)."""
    return trio.run(_check_store, state_dir, types, frames)


async def _check_store(state_dir: Path, types: bytes, frames: bytes) -> StoreCheck:
    result = StoreCheck()
    paging = [g for g, t in enumerate(types) if t in _FRAMELESS_PAGING and not bit(frames, g)]
    result.frameless = len(paging)
    if not (state_dir / PAGES).exists():
        result.missing = paging
        return result
    try:
        store = await PageStore.open(RealDisk(state_dir), lock_wait=0)
    except StoreLocked:
        result.error = "store is locked: a pager still owns it"
        return result
    except (OSError, StoreError) as exc:
        result.error = f"cannot read the store: {exc}"
        return result
    try:
        result.rows = len(store.rows)
        to_read = []
        for gfn, row in sorted(store.rows.items()):
            if gfn >= len(types):
                result.bad_checksum.append(gfn)
            elif bit(frames, gfn):
                result.resident_rows.append(gfn)
            else:
                to_read.append(row)
        for row, data in zip(to_read, await store.read_slots(to_read), strict=True):
            if not isinstance(data, bytes):
                result.bad_checksum.append(row.gfn)
        result.missing = [g for g in paging if g not in store.rows]
    except OSError as exc:
        result.error = f"cannot read the store: {exc}"
    finally:
        await store.close()
    return result
