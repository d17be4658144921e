"""The simulated disk's tree: paths, views, and what a crash or a power loss leaves of it.

`DiskTree` is `SimDisk`'s base: the directories and files behind its `Disk` calls, walked
for checks and the trace, and reverted to their durable state by `crash` and
`power_loss` (sim/disk.py's docstring has the model).
"""

from __future__ import annotations

import errno as _errno
from collections import Counter
from typing import TYPE_CHECKING, Final

from pager.disk import SECTOR

from .disk_files import _apply, _Dir, _File, _oserror

if TYPE_CHECKING:
    import random

    import trio

    from .disk import Emit
    from .disk_files import SimLock

#: Power-loss modes: lose every unsynced change, or keep a seeded subset (one write torn).
POWER_MODES: Final = ("drop", "subset")


class DiskTree:
    """The in-memory tree under a `SimDisk`; `SimDisk.__init__` sets the state below."""

    rng: random.Random
    emit: Emit
    root: _Dir
    epoch: int
    counters: Counter[str]
    _lock_holder: SimLock | None
    _lock_free: trio.lowlevel.ParkingLot

    # ------------------------------------------------------------------ paths

    def _lookup(self, name: str) -> _File | _Dir | None:
        node: _File | _Dir = self.root
        for part in [p for p in name.split("/") if p]:
            if not isinstance(node, _Dir):
                return None
            child = node.entries.get(part)
            if child is None:
                return None
            node = child
        return node

    def _parent(self, name: str) -> tuple[_Dir, str]:
        head, _, leaf = name.strip("/").rpartition("/")
        parent = self._lookup(head)
        if not isinstance(parent, _Dir) or not leaf:
            raise _oserror(_errno.ENOENT, f"no directory for {name!r}")
        return parent, leaf

    def _dir(self, name: str) -> _Dir:
        node = self._lookup(name)
        if node is None:
            raise _oserror(_errno.ENOENT, f"no directory {name!r}")
        if not isinstance(node, _Dir):
            raise _oserror(_errno.ENOTDIR, f"{name!r} is not a directory")
        return node

    def _release_lock(self) -> None:
        self._lock_holder = None
        self._lock_free.unpark_all()

    # ------------------------------------------------------------------ views

    def files(self) -> dict[str, _File]:
        """Every file reachable now, by path."""
        out: dict[str, _File] = {}

        def walk(d: _Dir, prefix: str) -> None:
            for leaf, node in d.entries.items():
                path = f"{prefix}{leaf}"
                if isinstance(node, _Dir):
                    walk(node, path + "/")
                else:
                    out[path] = node

        walk(self.root, "")
        return out

    def used_bytes(self) -> int:
        """Bytes of file data held now."""
        return sum(len(f.data) for f in self.files().values())

    def unsynced(self) -> int:
        """Writes and truncates not yet made durable, over every file."""
        return sum(len(f.pending) for f in self.files().values())

    def contents(self, name: str) -> bytes:
        """What a read of the whole file `name` sees now (for checks and tests)."""
        node = self._lookup(name)
        if not isinstance(node, _File):
            raise _oserror(_errno.ENOENT, f"no file {name!r}")
        return bytes(node.data)

    def digest(self) -> str:
        """A hash of the whole tree as reads see it (for the determinism trace)."""
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        for path, node in sorted(self.files().items()):
            h.update(path.encode() + b"\0" + len(node.data).to_bytes(8, "little"))
            h.update(node.data)
        return h.hexdigest()

    # ------------------------------------------------------------------ crashes

    def crash(self) -> None:
        """The owning process died: handles die, the lock is free, no byte is lost."""
        self.epoch += 1
        self._release_lock()
        self.counters["crashes"] += 1

    def power_loss(self, mode: str = "drop") -> dict[str, int]:
        """The machine died: unsynced changes are lost, or a seeded subset kept (one torn).

        Returns what happened: writes lost, kept and torn, directories reverted.
        """
        if mode not in POWER_MODES:
            raise ValueError(f"power-loss mode must be one of {POWER_MODES}, not {mode!r}")
        stats = Counter[str]()
        self._revert_dirs(self.root, mode, stats)
        torn_done = False
        for node in self._durable_files():
            kept: list[tuple[int, bytes] | int] = []
            for change in node.pending:
                if mode == "subset" and self.rng.random() < 0.5:
                    kept.append(change)
                else:
                    stats["lost"] += 1
            if kept and not torn_done:
                i = self.rng.randrange(len(kept))
                torn = self._tear(kept[i])
                if torn is not None:
                    kept[i] = torn
                    torn_done = True
                    stats["torn"] += 1
            for change in kept:
                _apply(node.durable, change)
            stats["kept"] += len(kept)
            node.data = bytearray(node.durable)
            node.pending.clear()
            node.bad = {s for s in node.bad if s * SECTOR < len(node.data)}
        self.crash()
        self.counters["power_losses"] += 1
        for k, v in stats.items():
            self.counters[f"power.{k}"] += v
        self.emit("disk.power_loss", mode=mode, **dict(sorted(stats.items())))
        return dict(stats)

    def _tear(self, change: tuple[int, bytes] | int) -> tuple[int, bytes] | None:
        """A write cut to a prefix of its whole sectors (None: nothing to tear)."""
        if isinstance(change, int):
            return None
        off, data = change
        # Sector boundaries inside the write, counted in absolute file offsets.
        cuts = [b - off for b in range((off // SECTOR + 1) * SECTOR, off + len(data), SECTOR)]
        if not cuts:
            return None
        return off, data[: self.rng.choice(cuts)]

    def _revert_dirs(self, d: _Dir, mode: str, stats: Counter[str]) -> None:
        if d.entries != d.durable:
            if mode == "subset" and self.rng.random() < 0.5:
                d.durable = dict(d.entries)
                stats["dirs_kept"] += 1
            else:
                d.entries = dict(d.durable)
                stats["dirs_reverted"] += 1
        for node in d.entries.values():
            if isinstance(node, _Dir):
                self._revert_dirs(node, mode, stats)

    def _durable_files(self) -> list[_File]:
        """Files reachable after the directories were reverted (in a stable order)."""
        return [node for _, node in sorted(self.files().items())]
