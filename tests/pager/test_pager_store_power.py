"""Power loss at the `Disk` level, no simulator: the store through page-outs, frees and
page-ins over an in-memory disk whose power fails at random instants and between steps.

The driver plays hv's part as the pager's pipelines do (DESIGN.md "pager"): a batch's
gfns are evicted only after `persist` returned; a page-in's row is freed only after the
copy was read back (prep answered 0). After each power loss (unsynced writes dropped, or
a random subset kept with one torn at a 512-byte boundary) the store is reopened and
reconciled: every frameless gfn has a row whose slot reads back its last bytes (nothing
durable lost) and no read anywhere returns bytes that are not the ones written for that
(gfn, gen) (no wrong byte). A planted bug, the page-out's sync skipped, must fail it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import pytest
from memdisk import MemDisk, MemFile, PowerCut

from pager import PageStore, Row, checksum
from pager.store import PAGES
from pager.store_format import EXTENT_BYTES, SLOT_SIZE
from protocol import PAGE_SIZE

NR = 48


class Scenario:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.disk = MemDisk()
        self.frameless: dict[int, bytes] = {}  # gfn -> the bytes its copy must hold
        self.resident: dict[int, bytes] = {g: self._data(g, 0) for g in range(NR)}
        self.written: dict[tuple[int, int], bytes] = {}  # (gfn, gen) -> bytes written
        self.store: PageStore | None = None
        self.crashes = 0

    def _data(self, gfn: int, version: int) -> bytes:
        return (gfn.to_bytes(2, "little") + version.to_bytes(4, "little")) * (PAGE_SIZE // 6) + (
            bytes(PAGE_SIZE % 6)
        )

    async def open(self) -> PageStore:
        store = await PageStore.open(self.disk, lock_wait=0)
        await store.bind_instance("inst")
        # Recovery's checks, then the reconcile: rows of gfns with a frame are freed.
        await self.check(store)
        stale = [(g, r.gen) for g, r in store.rows.items() if g in self.resident]
        if stale:
            await store.delete_rows(stale)
        return store

    async def check(self, store: PageStore) -> None:
        missing = [g for g in self.frameless if g not in store.rows]
        assert not missing, f"durable copies lost: {missing}"
        rows = list(store.rows.values())
        for row, data in zip(rows, await store.read_slots(rows), strict=True):
            if isinstance(data, bytes):
                # A bool, not `assert a == b`: pytest would diff 4 KiB of bytes (minutes, CI set).
                same = data == self.written[(row.gfn, row.gen)]
                assert same, f"wrong bytes for {row}"
            assert row.gfn not in self.frameless or data == self.frameless[row.gfn], (
                f"gfn {row.gfn}: its only copy does not read back: {data!r:.60}"
            )

    async def page_out(self, store: PageStore) -> None:
        gfns = self.rng.sample(sorted(self.resident), min(len(self.resident), 6))
        if not gfns:
            return
        slots = store.reserve(len(gfns))
        rows, pages = [], []
        for g, s in zip(gfns, slots, strict=True):
            gen = store.next_gen()
            data = self.resident[g]
            self.written[(g, gen)] = data
            rows.append(Row(g, gen, s, checksum(g, gen, data)))
            pages.append(data)
        frees = [(g, r.gen) for g, r in store.rows.items() if g in self.resident]
        await store.persist(rows, pages, self.rng.sample(frees, len(frees) // 2))
        for g in gfns:  # evict: only now is the copy the only one
            self.frameless[g] = self.resident.pop(g)

    async def page_in(self, store: PageStore) -> None:
        gfns = self.rng.sample(sorted(self.frameless), min(len(self.frameless), 4))
        rows = [store.rows[g] for g in gfns]
        store.pin(rows)
        try:
            datas = await store.read_slots(rows)
        finally:
            store.unpin(rows)
        for g, data in zip(gfns, datas, strict=True):
            # A bool, not `assert a == b`: pytest would diff 4 KiB of bytes (minutes, CI set).
            same = data == self.frameless[g]
            assert same, f"gfn {g}: wrong bytes"
            version = self.rng.randrange(1 << 20)
            self.resident[g] = self._data(g, version)  # prep answered 0; the guest writes
            del self.frameless[g]
        if self.rng.random() < 0.5:  # freed now, or left to ride a later page-out
            await store.delete_rows([(r.gfn, r.gen) for r in rows])

    async def run(self, steps: int) -> None:
        self.store = await self.open()
        for _ in range(steps):
            if self.rng.random() < 0.3:
                self.disk.crash_in(self.rng.randrange(1, 6))  # at a random instant
            step = self.page_out if self.rng.random() < 0.6 else self.page_in
            try:
                await step(self.store)
                if self.rng.random() < 0.15:
                    raise PowerCut("between steps")
            except PowerCut:
                await self.power_loss()
        self.disk.crash_in(None)
        await self.check(self.store)

    async def power_loss(self) -> None:
        assert self.store is not None
        await self.store.abandon()
        self.crashes += 1
        self.disk.power_loss(self.rng if self.rng.random() < 0.5 else None)
        self.store = await self.open()


async def run_seeds(seeds: range, steps: int = 60) -> int:
    crashes = 0
    for seed in seeds:
        scenario = Scenario(seed)
        try:
            await scenario.run(steps)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: {exc}") from exc
        crashes += scenario.crashes
    return crashes


async def test_power_loss_at_random_instants_loses_nothing_durable() -> None:
    crashes = await run_seeds(range(40))
    assert crashes > 100  # the faults did fire, often


async def test_power_loss_after_every_kind_of_disk_operation() -> None:
    """A crash at each operation of a step (countdown 1, 2, ...) in turn."""
    for n in range(1, 8):
        scenario = Scenario(1000 + n)
        scenario.store = await scenario.open()
        for _ in range(4):
            await scenario.page_out(scenario.store)
        for _ in range(6):
            scenario.disk.crash_in(n)
            step = scenario.page_out if scenario.rng.random() < 0.5 else scenario.page_in
            try:
                await step(scenario.store)
            except PowerCut:
                await scenario.power_loss()
            scenario.disk.crash_in(None)
        await scenario.check(scenario.store)


async def test_the_checker_catches_a_skipped_page_out_sync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The planted bug: the pages file's sync does nothing (the page-out's durable step
    skipped). The same runs must then find a lost or wrong copy."""
    real_sync: Callable[[MemFile], object] = MemFile.sync

    async def skipped(self: MemFile) -> None:
        if self.name != PAGES:
            await real_sync(self)  # type: ignore[misc]

    monkeypatch.setattr(MemFile, "sync", skipped)
    with pytest.raises(AssertionError, match=r"lost|wrong|does not read back"):
        await run_seeds(range(40))


async def test_the_checker_catches_a_skipped_checksum(monkeypatch: pytest.MonkeyPatch) -> None:
    """The other planted bug: reads hand out whatever the slot holds. Torn and lost writes
    then reach a reader as wrong bytes, and the checker says so."""
    monkeypatch.setattr("pager.store._verified", lambda row, data: data)
    with pytest.raises(AssertionError, match=r"wrong bytes|does not read back"):
        await run_seeds(range(40))


async def test_a_free_left_unsynced_loses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the sim plants no "skip the sync after a slot free" (issue 15 lists it, SIM.md
    does not): in this store that bug cannot lose or corrupt a page, and this shows it.

    A free record matters only until the next sync of the pages file, which carries it to
    the media with that phase's own writes; every page-out syncs before its evict, and a
    phase that reuses the slot rewrites the slot's header page whole. Until then, a power
    loss can only bring back a row the free had dropped: of a gfn with a frame (paged in,
    or ballooned), which recovery frees again, or named by a newer generation, which wins.
    The same runs as above, with the sync of every phase that wrote header pages only (a
    free, a disk phase of its own) skipped: nothing durable lost, no wrong byte, and the
    dropped frees did bring rows back (the case was exercised, not missed)."""
    real_sync: Callable[[MemFile], object] = MemFile.sync
    skipped = 0

    async def free_unsynced(self: MemFile) -> None:
        nonlocal skipped
        ops = self.inode.pending
        if self.name == PAGES and ops and all(_header_page(op) for op in ops):
            skipped += 1
            return  # the planted bug: the free records are left in the page cache
        await real_sync(self)  # type: ignore[misc]  # an unbound async method, called as one

    freed: set[tuple[int, int]] = set()
    back = 0
    delete_rows, reopen = PageStore.delete_rows, Scenario.open

    async def deleting(self: PageStore, keys: Sequence[tuple[int, int]]) -> None:
        await delete_rows(self, keys)
        freed.update(keys)

    async def opening(self: Scenario) -> PageStore:
        nonlocal back
        store = await PageStore.open(self.disk, lock_wait=0)
        back += sum((g, r.gen) in freed for g, r in store.rows.items())
        await store.abandon()
        return await reopen(self)

    monkeypatch.setattr(MemFile, "sync", free_unsynced)
    monkeypatch.setattr(PageStore, "delete_rows", deleting)
    monkeypatch.setattr(Scenario, "open", opening)
    await run_seeds(range(40))
    assert skipped > 400 and back > 1000, (skipped, back)  # 837 and 6,576 here


def _header_page(op: tuple[str, int, bytes]) -> bool:
    kind, offset, data = op
    return kind == "w" and offset % EXTENT_BYTES == 0 and len(data) == SLOT_SIZE
