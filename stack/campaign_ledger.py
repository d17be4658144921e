"""The campaign ledger: one SQLite row per seed run, written a block per transaction.

A row: seed, kind (`run`, or `recheck` for a determinism re-run on another worker),
xpemu version and git commit, the options (JSON), verdict, duration (wall) and CPU
seconds, faults fired by kind (JSON), crash points (JSON), trace hash, worker, first
failure, gfns the guest found lost. A block of results goes in one transaction, so an
interrupted campaign leaves whole blocks only; `--resume` asks `done_seeds` which seeds
already have a `run` row under the same options.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seed INTEGER NOT NULL,
    kind TEXT NOT NULL,
    options TEXT NOT NULL,
    version TEXT NOT NULL,
    git_commit TEXT,
    verdict TEXT NOT NULL,
    duration_s REAL NOT NULL,
    faults TEXT NOT NULL,
    crash_points TEXT NOT NULL,
    trace_hash TEXT NOT NULL,
    worker TEXT NOT NULL,
    failure TEXT,
    recorded_at REAL NOT NULL,
    cpu_s REAL,
    lost_gfns INTEGER,
    UNIQUE (seed, kind, options)
)
"""
_COLUMNS = (
    "seed, kind, options, version, git_commit, verdict, duration_s, faults, crash_points, "
    "trace_hash, worker, failure, recorded_at, cpu_s, lost_gfns"
)
#: Columns added since the first ledgers, with their types: an older ledger gains them.
_ADDED = (("cpu_s", "REAL"), ("lost_gfns", "INTEGER"))


class LedgerError(Exception):
    """The ledger file cannot be opened or is not a campaign ledger."""


class Ledger:
    """An open ledger file."""

    def __init__(self, path: Path, *, version: str, commit: str | None, options: str) -> None:
        self.path = path
        self.version = version
        self.commit = commit
        self.options = options
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute(_SCHEMA)
            names = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
            for name, kind in _ADDED:  # a ledger from before they were recorded
                if name not in names:
                    self._db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from None

    def close(self) -> None:
        """Close the file (every block is already committed)."""
        self._db.close()

    def done_seeds(self) -> set[int]:
        """Seeds that already have a `run` row under these options."""
        rows = self._db.execute(
            "SELECT seed FROM runs WHERE kind = 'run' AND options = ?", (self.options,)
        )
        return {int(seed) for (seed,) in rows}

    def record(self, results: Iterable[dict[str, Any]], kind: str = "run") -> None:
        """Write one block of per-seed results in one transaction."""
        now = time.time()
        rows = [
            (
                r["seed"],
                kind,
                self.options,
                self.version,
                self.commit,
                r["verdict"],
                r["duration_s"],
                json.dumps(r["faults"], sort_keys=True),
                json.dumps(r["crash_points"], sort_keys=True),
                r["trace_hash"],
                r["worker"],
                r["failures"][0] if r["failures"] else None,
                now,
                r.get("cpu_s"),
                r.get("lost_gfns"),
            )
            for r in results
        ]
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                f"INSERT OR REPLACE INTO runs ({_COLUMNS}) VALUES ({','.join('?' * 15)})", rows
            )

    def rows(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every row (of one kind), as dicts, in seed order."""
        query = "SELECT * FROM runs" + (" WHERE kind = ?" if kind else "") + " ORDER BY seed"
        cur = self._db.execute(query, (kind,) if kind else ())
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]


__all__ = ["Ledger", "LedgerError"]
