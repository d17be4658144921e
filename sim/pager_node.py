"""The pager inside the sim: its lives (start, crash, power loss), its disk, its store check.

The world (`sim.world`) talks to the pager only through `PagerNode`: the REAL pager
(`pager.run_pager`) with its store opened by `pager.open_store` over one `sim.disk.SimDisk`
that outlives every pager life. The store is async over its `Disk` and `SimDisk` never
blocks, so no thread and no real file is involved and a run stays a function of its seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol

import trio

from pager import PagerConfig, open_store, parse_faults, raise_simulated_crash, run_pager
from protocol import P2MType, bit

from .disk import PROCESS, DiskFaults, SimDisk

Emit = Callable[..., None]


class PagerNode(Protocol):
    """What the world needs of the pager under test."""

    #: Set before a life armed with a crash point: the power goes (this mode) when it fires.
    power_at_crash: str | None

    async def life(self, stream: trio.abc.Stream, spec: str, stop: trio.Event) -> Any:
        """Run one pager process over `stream`, armed with fault `spec`, until `stop`."""
        ...

    def dying(self) -> None:
        """The process dies this instant: nothing its tasks do from now reaches the disk."""
        ...

    def crashed(self) -> None:
        """The pager process died (its tasks are gone): what the OS does at its death."""
        ...

    def power_loss(self, mode: str) -> None:
        """The machine lost power: unsynced writes go (or a seeded subset stays, torn)."""
        ...

    def set_disk_faults(self, faults: DiskFaults) -> None:
        """The disk misbehaves this way from now on."""
        ...

    async def check_store(self, types: bytes, frames: bytes) -> tuple[set[int], set[int]]:
        """Invariant 4: exactly one valid copy per frameless paging gfn. The frameless
        gfns without a copy, and those whose copy does not verify."""
        ...

    def close(self) -> None:
        """Release what the node holds."""
        ...


class DiskPagerNode:
    """The pager over a `SimDisk` (power loss and every disk fault of `sim.disk` reach
    it): `open_store(disk)` then one `run_pager` per life; store faults of a `store`
    fault through `open_store`'s fault layer."""

    def __init__(self, config: PagerConfig, rng: random.Random, emit: Emit) -> None:
        self.config = config
        self.disk = SimDisk(rng, emit=emit)
        self.power_at_crash: str | None = None

    async def life(self, stream: trio.abc.Stream, spec: str, stop: trio.Event) -> Any:
        """One pager process over the sim disk; SimulatedCrash at an armed crash point."""
        power, self.power_at_crash = self.power_at_crash, None

        def crash_point(point: str) -> None:
            # SIGKILL semantics: the handles die before any task unwinds, so no cleanup on
            # the way out (a finally, a close) can write; or the whole machine goes.
            if power is not None:
                self.disk.power_loss(power)
            else:
                self.dying()
            raise_simulated_crash(point)

        faults = parse_faults(spec, crash=crash_point)
        # Every task of this life carries its epoch: once it died, the disk refuses them.
        token = PROCESS.set(self.disk.epoch)
        try:
            try:
                store = await open_store(
                    self.disk, faults=faults, lock_timeout=self.config.lock_timeout
                )
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            return await run_pager(stream, store, self.config, faults=faults, stop=stop)
        finally:
            PROCESS.reset(token)

    def dying(self) -> None:
        """Every handle of the process dies now (EBADF from here on)."""
        self.disk.crash()

    def crashed(self) -> None:
        """The process died: its handles and its lock go, its writes stay (the OS has them)."""
        self.disk.crash()

    def power_loss(self, mode: str) -> None:
        """Unsynced writes and metadata changes are lost (or a seeded subset kept, torn)."""
        self.disk.power_loss(mode)

    def set_disk_faults(self, faults: DiskFaults) -> None:
        """The sim disk misbehaves this way from now on."""
        self.disk.faults = faults

    async def check_store(self, types: bytes, frames: bytes) -> tuple[set[int], set[int]]:
        """Open the store as the next pager would and read every frameless gfn's copy."""
        store = await open_store(self.disk, lock_timeout=0.0)
        unreadable: set[int] = set()
        try:
            frameless = (int(P2MType.paged), int(P2MType.paging_in_start))
            wanted = [g for g, t in enumerate(types) if t in frameless and not bit(frames, g)]
            rows = {g: store.rows.get(g) for g in wanted}
            missing = {g for g, r in rows.items() if r is None}
            present = [r for r in rows.values() if r is not None]
            for row, data in zip(present, await store.read_slots(present), strict=True):
                if not isinstance(data, bytes):
                    unreadable.add(row.gfn)
        finally:
            await store.abandon()
            self.disk.crash()  # and the lock goes with the checker
        return missing, unreadable

    def close(self) -> None:
        """Nothing outside memory."""


def make_pager_node(config: PagerConfig, rng: random.Random, emit: Emit) -> PagerNode:
    """The pager node of a run."""
    return DiskPagerNode(config, rng, emit)


__all__ = ["DiskPagerNode", "PagerNode", "make_pager_node"]
