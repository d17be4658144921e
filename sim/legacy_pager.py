"""The current pager in the sim (until its store speaks `Disk`): SQLite in a temp directory.

`LegacyPagerNode` runs the REAL current pager (`pager.run_pager` over a state directory:
a pages file and a SQLite index) with its worker-thread calls inlined on the event loop
(`sim.pager_node.inline_threads`). Its limits, until the store speaks `Disk`:

- its state directory is a real temporary directory (tmpfs when there is one), so a
  power loss cannot be simulated: `power_loss` answers False and the world counts the
  fault as a plain crash (`power.unsupported` in the trace);
- disk faults reach it through its `DiskIO` seam (EIO on write, sync and read, ENOSPC on
  write, corrupted reads for latent sectors); misdirected writes and slow syncs cannot
  (the seam sees no offsets worth moving and cannot await).

This module imports what only the current store has (`DiskIO`, the SQLite index): it is
imported only when `sim.pager_node.make_pager_node` needs it, and goes once the rebuilt
store lands.
"""

from __future__ import annotations

import errno as _errno
import importlib
import os
import random
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import trio

from pager import DiskIO, PagerConfig, parse_faults, raise_simulated_crash, run_pager
from pager.store import SLOT_SIZE, checksum
from protocol import P2MType, bit

from .disk import DiskFaults
from .pager_node import Emit, _takes_store, inline_threads


class _FaultyIO(DiskIO):
    """The store's `DiskIO` seam failing at the sim's rates, drawn from the sim's rng."""

    def __init__(self, rng: random.Random, emit: Emit) -> None:
        self.rng = rng
        self.emit = emit
        self.faults = DiskFaults()

    def _fires(self, rate: float, kind: str) -> bool:
        if rate and self.rng.random() < rate:
            self.emit("disk.fault", kind=kind)
            return True
        return False

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        if self._fires(self.faults.eio_write, "eio_write"):
            raise OSError(_errno.EIO, "simulated EIO on write")
        if self._fires(self.faults.enospc, "enospc"):
            raise OSError(_errno.ENOSPC, "simulated ENOSPC on write")
        super().pwrite(fd, data, offset)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        if self._fires(self.faults.eio_read, "eio_read"):
            raise OSError(_errno.EIO, "simulated EIO on read")
        data = super().pread(fd, size, offset)
        if data and self._fires(self.faults.latent, "latent"):
            buf = bytearray(data)
            buf[self.rng.randrange(len(buf))] ^= 0xA5
            data = bytes(buf)
        return data

    def fdatasync(self, fd: int) -> None:
        if self._fires(self.faults.eio_sync, "eio_sync"):
            raise OSError(_errno.EIO, "simulated EIO on fdatasync")
        super().fdatasync(fd)


class LegacyPagerNode:
    """The current pager (SQLite store in a real temporary directory), threads inlined."""

    simulates_power = False

    def __init__(self, config: PagerConfig, rng: random.Random, emit: Emit) -> None:
        self.config = config
        self.emit = emit
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.state_dir = Path(tempfile.mkdtemp(prefix="xpemu-sim-", dir=base))
        self.io = _FaultyIO(rng, emit)

    async def life(self, stream: trio.abc.Stream, spec: str, stop: trio.Event) -> Any:
        """One pager process; SimulatedCrash when an armed crash point fires."""
        faults = parse_faults(spec, crash=raise_simulated_crash)
        with inline_threads():
            run: Any = run_pager  # either shape of the entry point
            if not _takes_store():
                return await run(
                    stream, self.state_dir, self.config, faults=faults, stop=stop, io=self.io
                )
            # The split core (issue 14): the entry point takes an open store.
            open_store: Any = getattr(importlib.import_module("pager"), "open_store")  # noqa: B009

            try:
                store = await open_store(
                    self.state_dir, faults=faults, io=self.io, lock_timeout=self.config.lock_timeout
                )
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            return await run(stream, store, self.config, faults=faults, stop=stop)

    def dying(self) -> None:
        """Nothing to do: the current store's close only closes descriptors."""

    def crashed(self) -> None:
        """Nothing to do: the cancelled run_pager closed its descriptors, as the kernel
        would, and everything it wrote is in the (real) page cache."""

    def power_loss(self, mode: str) -> bool:
        """Not possible over a real directory: see the module docstring."""
        return False

    def set_disk_faults(self, faults: DiskFaults) -> None:
        """From now on the store's seam fails at these rates."""
        self.io.faults = faults

    async def check_store(self, types: bytes, frames: bytes) -> list[str]:
        """Each frameless paging gfn has exactly one row whose slot verifies."""
        await trio.lowlevel.checkpoint()
        return self._check(types, frames)

    def _check(self, types: bytes, frames: bytes) -> list[str]:
        index = self.state_dir / "index.sqlite"
        if not index.exists():
            rows: list[tuple[int, int, int, int]] = []
        else:
            db = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
            try:
                rows = db.execute("SELECT gfn, gen, slot, crc FROM pages").fetchall()
            finally:
                db.close()
        by_gfn: dict[int, list[tuple[int, int, int]]] = {}
        for gfn, gen, slot, crc in rows:
            by_gfn.setdefault(gfn, []).append((gen, slot, crc))
        out: list[str] = []
        frameless = (int(P2MType.paged), int(P2MType.paging_in_start))
        with open(self.state_dir / "pages.bin", "rb") as f:
            for gfn, t in enumerate(types):
                if t not in frameless or bit(frames, gfn):
                    continue
                copies = by_gfn.get(gfn, [])
                good = 0
                for gen, slot, crc in copies:
                    f.seek(slot * SLOT_SIZE)
                    if checksum(gfn, gen, f.read(SLOT_SIZE)) == crc:
                        good += 1
                if good != 1 or len(copies) != 1:
                    out.append(f"gfn {gfn}: {len(copies)} store rows, {good} valid (want 1, 1)")
        return out

    def close(self) -> None:
        """Remove the state directory."""
        shutil.rmtree(self.state_dir, ignore_errors=True)


__all__ = ["LegacyPagerNode"]
