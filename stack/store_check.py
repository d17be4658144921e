"""Invariant 4 from outside the pager: read its store and hold it against hv's `audit`.

The pager's store format (pager/store.py): `index.sqlite` holds `pages(gfn, gen, slot,
crc)`, `pages.bin` holds slot i at offset i * 4096, and `crc` is `pager.store.checksum(gfn,
gen, data)`. This check runs only while no pager owns the store: it takes the same `flock`
the pager takes, so a running pager makes it fail loudly instead of reading a moving target.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pager.store import SLOT_SIZE, checksum
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
    """Compare the store in `state_dir` with an audit (`types`, `frames` bitmap) of every gfn."""
    result = StoreCheck()
    result.frameless = sum(
        1 for g, t in enumerate(types) if t in _FRAMELESS_PAGING and not bit(frames, g)
    )
    index = state_dir / "index.sqlite"
    if not index.exists():
        result.missing = [
            g for g, t in enumerate(types) if t in _FRAMELESS_PAGING and not bit(frames, g)
        ]
        return result
    lock_fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            result.error = "store is locked: a pager still owns it"
            return result
        rows = _rows(index)
        result.rows = len(rows)
        by_gfn = {gfn: (gen, slot, crc) for gfn, gen, slot, crc in rows}
        with open(state_dir / "pages.bin", "rb") as pages:
            for gfn, (gen, slot, crc) in sorted(by_gfn.items()):
                if gfn >= len(types):
                    result.bad_checksum.append(gfn)
                    continue
                if bit(frames, gfn):
                    result.resident_rows.append(gfn)
                    continue
                data = os.pread(pages.fileno(), SLOT_SIZE, slot * SLOT_SIZE)
                if len(data) != SLOT_SIZE or checksum(gfn, gen, data) != crc:
                    result.bad_checksum.append(gfn)
        for g, t in enumerate(types):
            if t in _FRAMELESS_PAGING and not bit(frames, g) and g not in by_gfn:
                result.missing.append(g)
    except (OSError, sqlite3.Error) as exc:
        result.error = f"cannot read the store: {exc}"
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)
    return result


def _rows(index: Path) -> list[tuple[int, int, int, int]]:
    # Read-write open (not mode=ro): a WAL database left by a killed writer needs its -shm
    # rebuilt, which a read-only connection cannot do. We hold the pager's lock meanwhile.
    db = sqlite3.connect(index, isolation_level=None)
    try:
        return db.execute("SELECT gfn, gen, slot, crc FROM pages").fetchall()
    finally:
        db.close()
