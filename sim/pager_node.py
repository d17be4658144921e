"""The pager inside the sim: its lives (start, crash, power loss), its disk, its store check.

The world (`sim.world`) talks to the pager only through `PagerNode`. `make_pager_node`
picks `DiskPagerNode` (the rebuilt store over a `SimDisk`, issue 14) as soon as the store
speaks `pager.disk.Disk`; until then `sim.legacy_pager.LegacyPagerNode` runs the current
pager over a temporary directory (see its module for what that cannot simulate). Both run
the REAL pager: `inline_threads` makes the worker-thread calls that remain run on the
event loop, so nothing waits on a thread and the run stays a function of its seed.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import random
import types
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import trio

from pager import PagerConfig, PageStore, parse_faults, raise_simulated_crash, run_pager
from pager import core as pager_core
from protocol import P2MType, bit

from .disk import DiskFaults, SimDisk

Emit = Callable[..., None]


class PagerNode(Protocol):
    """What the world needs of the pager under test."""

    #: True when `power_loss` can really drop unsynced writes.
    simulates_power: bool

    async def life(self, stream: trio.abc.Stream, spec: str, stop: trio.Event) -> Any:
        """Run one pager process over `stream`, armed with fault `spec`, until `stop`."""
        ...

    def dying(self) -> None:
        """The process dies this instant: nothing its tasks do from now reaches the disk."""
        ...

    def crashed(self) -> None:
        """The pager process died (its tasks are gone): what the OS does at its death."""
        ...

    def power_loss(self, mode: str) -> bool:
        """The machine lost power; False if this node cannot simulate it."""
        ...

    def set_disk_faults(self, faults: DiskFaults) -> None:
        """The disk misbehaves this way from now on."""
        ...

    async def check_store(self, types: bytes, frames: bytes) -> list[str]:
        """Invariant 4: exactly one valid copy per frameless paging gfn; violations."""
        ...

    def close(self) -> None:
        """Release what the node holds (its directory)."""
        ...


@contextlib.contextmanager
def inline_threads() -> Iterator[None]:
    """Make `trio.to_thread.run_sync` call its function on the event loop (after a
    checkpoint), for the current pager's blocking store calls inside the sim; and the
    current pager's `time.monotonic` (it times its recovery with it) trio's clock."""
    original = trio.to_thread.run_sync

    async def run_inline(fn: Callable[..., Any], *args: Any, **_: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(*args)

    setattr(trio.to_thread, "run_sync", run_inline)  # noqa: B010 (a module attribute, swapped)
    clock = getattr(pager_core, "time", None)
    if clock is not None:
        setattr(pager_core, "time", types.SimpleNamespace(monotonic=trio.current_time))  # noqa: B010
    try:
        yield
    finally:
        setattr(trio.to_thread, "run_sync", original)  # noqa: B010
        if clock is not None:
            setattr(pager_core, "time", clock)  # noqa: B010


class DiskPagerNode:
    """The rebuilt pager: its store opened over a `SimDisk` (power loss and every disk
    fault of `sim.disk` reach it), one `run_pager` per life.

    Written against the shape the pager rebuild (issue 14) gives: `PageStore.open(disk,
    lock_wait=...)`, then `run_pager(stream, store, config, faults=, stop=)`; or, with
    only the store's half landed, `run_pager(stream, state_dir, ..., disk=disk)`. Store
    faults of a `store` fault go through `pager.store_faults.faulty_disk` when it exists.
    """

    simulates_power = True

    def __init__(self, config: PagerConfig, rng: random.Random, emit: Emit) -> None:
        self.config = config
        self.disk = SimDisk(rng, emit=emit)

    def _disk_for(self, faults: Any) -> Any:
        if not faults._store:
            return self.disk
        store_faults: Any = importlib.import_module("pager.store_faults")
        return store_faults.faulty_disk(self.disk, faults)

    async def life(self, stream: trio.abc.Stream, spec: str, stop: trio.Event) -> Any:
        """One pager process over the sim disk; SimulatedCrash at an armed crash point."""
        faults = parse_faults(spec, crash=self._crash_point)
        disk = self._disk_for(faults)
        with inline_threads():
            # Either shape of the entry point (see the class docstring): typed as Any.
            run: Any = run_pager
            if _takes_store():
                try:
                    store = await _open_store(disk, lock_wait=self.config.lock_timeout)
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
                return await run(stream, store, self.config, faults=faults, stop=stop)
            return await run(stream, "", self.config, faults=faults, stop=stop, disk=disk)

    def _crash_point(self, point: str) -> None:
        # SIGKILL semantics: the handles die before any task unwinds, so no cleanup on
        # the way out (a finally, a close) can write.
        self.dying()
        raise_simulated_crash(point)

    def dying(self) -> None:
        """Every handle of the process dies now (EBADF from here on)."""
        self.disk.crash()

    def crashed(self) -> None:
        """The process died: its handles and its lock go, its writes stay (the OS has them)."""
        self.disk.crash()

    def power_loss(self, mode: str) -> bool:
        """Unsynced writes and metadata changes are lost (or a seeded subset kept, torn)."""
        self.disk.power_loss(mode)
        return True

    def set_disk_faults(self, faults: DiskFaults) -> None:
        """The sim disk misbehaves this way from now on."""
        self.disk.faults = faults

    async def check_store(self, types: bytes, frames: bytes) -> list[str]:
        """Open the store as the next pager would and read every frameless gfn's copy."""
        store = await _open_store(self.disk, lock_wait=0.0)
        out: list[str] = []
        try:
            frameless = (int(P2MType.paged), int(P2MType.paging_in_start))
            wanted = [g for g, t in enumerate(types) if t in frameless and not bit(frames, g)]
            rows = {g: store.rows.get(g) for g in wanted}
            missing = [g for g, r in rows.items() if r is None]
            out += [f"gfn {g}: no store row for a frameless gfn" for g in missing]
            present = [r for r in rows.values() if r is not None]
            for row, data in zip(present, await store.read_slots(present), strict=True):
                if not isinstance(data, bytes):
                    out.append(f"gfn {row.gfn}: its copy does not verify ({data})")
        finally:
            await store.abandon()
            self.disk.crash()  # and the lock goes with the checker
        return out

    def close(self) -> None:
        """Nothing outside memory."""


async def _open_store(disk: Any, *, lock_wait: float) -> Any:
    """`PageStore.open(disk, lock_wait=)` of the rebuilt store (untyped here: today's
    `PageStore.open` takes a state directory and is not awaitable)."""
    opener: Any = PageStore.open
    return await opener(disk, lock_wait=lock_wait)


def _takes_store() -> bool:
    """Whether `run_pager` takes an open store (the rebuilt entry point) after the stream."""
    params = list(inspect.signature(run_pager).parameters)
    return len(params) > 1 and params[1] == "store"


def disk_store_ready() -> bool:
    """Whether the pager's store speaks `pager.disk.Disk` (so `DiskPagerNode` can run)."""
    params = list(inspect.signature(PageStore.open).parameters)
    return "disk" in params[:2]


def make_pager_node(config: PagerConfig, rng: random.Random, emit: Emit) -> PagerNode:
    """The pager node the code base allows: over the sim disk once the store speaks
    `Disk`, else the current pager over a temporary directory."""
    if disk_store_ready():
        return DiskPagerNode(config, rng, emit)
    from .legacy_pager import LegacyPagerNode  # imports what only the current store has

    return LegacyPagerNode(config, rng, emit)


__all__ = [
    "DiskPagerNode",
    "PagerNode",
    "disk_store_ready",
    "inline_threads",
    "make_pager_node",
]
