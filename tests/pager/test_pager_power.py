"""The whole pager on an in-memory disk whose power fails when the pager dies.

As test_pager_crash, but each crash point is also a power loss: what the pager had not
synced is gone (or partly kept, torn at 512-byte boundaries), then the next pager starts
from what the disk kept. Every frameless gfn must still have its last bytes, and the last
pager must lose nothing. With the page-out's sync skipped (planted), the same runs fail.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from memdisk import MemDisk, MemFile
from pager_harness import Guest, Stack, open_stack, page_bytes
from test_pager_crash import PAGEIN_POINTS, PAGEOUT_POINTS, config, finish, settle, workload

from pager import PageStore, SimulatedCrash
from pager.store import PAGES
from protocol import P2MType

NR = 192
VCPUS = 4
TARGET = 48


def find_exception(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`exc` or the first `kind` inside (nested) exception groups."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := find_exception(inner, kind)) is not None:
                return found
    return None


async def check_covers(stack: Stack, guest: Guest, disk: MemDisk) -> None:
    """Invariant 4 on what the disk kept: every frameless gfn has its last bytes."""
    p2m = stack.hv.domains[1].p2m
    store = await PageStore.open(disk, lock_wait=0)
    try:
        frameless = [
            g
            for g in range(NR)
            if p2m.types[g] in (P2MType.paged, P2MType.paging_in_start) and not p2m.has_frame(g)
        ]
        missing = [g for g in frameless if g not in store.rows]
        assert missing == [], f"frameless gfns without a durable copy: {missing}"
        datas = await store.read_slots([store.rows[g] for g in frameless])
        for g, data in zip(frameless, datas, strict=True):
            # A bool, not `assert a == b`: pytest would diff 4 KiB of bytes (minutes, CI set).
            same = data == page_bytes(g, guest.versions[g])
            assert same, f"gfn {g}: stored copy is wrong"
    finally:
        await store.abandon()


async def power_cut_then_recover(tmp_path: Path, spec: str, seed: int) -> None:
    disk = MemDisk()
    rng = random.Random(seed)
    async with open_stack(tmp_path, nr_gfns=NR, vcpus=VCPUS) as stack, stack.guest() as guest:
        await guest.fill(VCPUS)
        await stack.set_target(TARGET)
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def run_workload() -> None:
                await workload(guest)
                done.set()

            run = stack.start_pager(config(), faults=spec, disk=disk)
            await settle(stack, run)
            nursery.start_soon(run_workload)
            await run.finished.wait()
            assert isinstance(run.error, SimulatedCrash), f"{spec}: {run.error!r}"
            disk.power_loss(rng if seed % 2 else None)
            await check_covers(stack, guest, disk)
            last = stack.start_pager(config(), disk=disk)
            await last.wait_started()
            await done.wait()
        await finish(stack, guest, last)


@pytest.mark.parametrize("point", PAGEOUT_POINTS + PAGEIN_POINTS)
@pytest.mark.parametrize("seed", [0, 1])
async def test_power_loss_at_a_crash_point_loses_nothing(
    tmp_path: Path, point: str, seed: int
) -> None:
    n = config().pipeline + 1 if point in ("after_nominate", "after_map") else 2
    with trio.fail_after(40):
        await power_cut_then_recover(tmp_path, f"{point}@{n}", seed)


async def test_a_pager_that_skips_the_page_out_sync_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planted bug: the pages file's sync does nothing. A power loss after the evict
    then takes copies that were the only ones, and the check says so."""
    real_sync: Callable[[MemFile], object] = MemFile.sync

    async def skipped(self: MemFile) -> None:
        if self.name != PAGES:
            await real_sync(self)  # type: ignore[misc]

    monkeypatch.setattr(MemFile, "sync", skipped)
    caught: BaseException | None = None
    with trio.fail_after(40):
        try:
            await power_cut_then_recover(tmp_path, "after_evict@2", 0)
        except BaseException as exc:  # the check's AssertionError, inside exception groups
            caught = exc
    found = find_exception(caught, AssertionError) if caught is not None else None
    assert found is not None and "without a durable copy" in str(found), repr(caught)
