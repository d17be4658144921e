"""hv + pager + a scripted guest in one trio run: page out, page in, every byte checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from hookdisk import HookedDisk
from pager_harness import open_stack

from pager import PagerConfig, RealDisk

NR = 256
VCPUS = 4


@pytest.mark.parametrize("policy", ["xenpaging", "clock", "car"])
async def test_page_out_to_target_touch_every_page_read_back(tmp_path: Path, policy: str) -> None:
    with trio.fail_after(30):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=VCPUS) as stack, stack.guest() as guest:
            await guest.fill(VCPUS)
            run = stack.start_pager(PagerConfig(policy=policy, batch=32))
            pager = await run.wait_started()
            await stack.set_target(NR // 4)
            await stack.until(pager, lambda: stack.domain_status()["tot_pages"] <= NR // 4)
            st = stack.domain_status()
            assert st["paged_pages"] >= NR - NR // 4
            assert len(pager.store.rows) >= st["paged_pages"]
            # Touch every page: every paged one faults and comes back with its bytes.
            await guest.verify_all(VCPUS)
            assert pager.stats.paged_in > 0
            # The pager keeps following the target while the guest faults pages back in.
            await stack.until(pager, lambda: stack.domain_status()["tot_pages"] <= NR // 4)
            await run.stop_ok()
            assert run.stats is not None and run.stats.detached
            st = stack.domain_status()
            assert st["paged_pages"] == 0
            assert st["pager"]["attached"] is False
            stack.assert_clean()
            await guest.verify_all(VCPUS)


def _held_sync_disk(state_dir: Path) -> tuple[HookedDisk, trio.Event]:
    """Counts syncs and writes; the first sync waits until the test sets the event."""
    disk = HookedDisk(RealDisk(state_dir))
    release = trio.Event()

    async def hold() -> None:
        if disk.syncs == 1:
            await release.wait()

    disk.before_sync = hold
    return disk, release


async def test_batches_ready_during_a_disk_phase_share_the_next_one(tmp_path: Path) -> None:
    """Group commit: while one disk phase's fdatasync runs, the next batches are nominated
    and mapped; they then share one fdatasync and one index commit. Eight batches, two
    phases: however many went into the first (that depends on when the map replies
    arrive), the phases were shared. Nothing is evicted before its copy is durable, and
    every byte comes back."""
    with trio.fail_after(30):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=VCPUS) as stack, stack.guest() as guest:
            await guest.fill(VCPUS)
            io, release = _held_sync_disk(stack.state_dir)
            run = stack.start_pager(PagerConfig(batch=16, pipeline=8, reserve=0), disk=io)
            pager = await run.wait_started()
            phases: list[int] = []  # batches per disk phase
            persist_group = pager.commit.persist_group

            async def counted(group: list[Any], deletes: Any = ()) -> bool:
                phases.append(len(group))
                pager.state.notify()  # re-check `until`'s condition
                return await persist_group(group, deletes)

            pager.commit.persist_group = counted  # type: ignore[method-assign]
            await stack.set_target(NR - 128)  # eight batches of 16
            # The first phase is held; every other batch gets mapped and queues behind it.
            await stack.until(
                pager, lambda: len(phases) == 1 and phases[0] + len(pager.commit.group) == 8
            )
            assert stack.domain_status()["paged_pages"] == 0  # nothing evicted yet
            release.set()
            await stack.until(pager, lambda: stack.domain_status()["paged_pages"] >= 128)
            assert sum(phases) == 8
            assert io.syncs == len(phases) <= 2  # one per phase; the queued batches shared one
            assert len(pager.store.rows) >= 128
            await guest.verify_all(VCPUS)
            await run.stop_ok()
            stack.assert_clean()


class _HoldArmedSync:
    """Holds the first sync after `armed` is set until the test releases it."""

    def __init__(self) -> None:
        self.armed = False
        self.held = trio.Event()
        self.release = trio.Event()

    async def __call__(self) -> None:
        if self.armed:
            self.armed = False
            self.held.set()
            await self.release.wait()


async def test_a_page_in_during_a_disk_phase_is_freed_by_the_next_one(tmp_path: Path) -> None:
    """The row of a copy paged in while a page-out's disk phase runs is deleted in the
    index transaction of the next phase, not in a commit of its own: for a guest at its
    target (one page-out per fault) that saves a sync per fault. Held phase, then a
    fault: the row goes, and the freer's own delete never ran."""
    with trio.fail_after(30):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=VCPUS) as stack, stack.guest() as guest:
            await guest.fill(VCPUS)
            io = _HoldArmedSync()
            disk = HookedDisk(RealDisk(stack.state_dir))
            disk.before_sync = io
            run = stack.start_pager(PagerConfig(batch=16, reserve=0), disk=disk)
            pager = await run.wait_started()
            await stack.set_target(NR - 32)
            await stack.until(pager, lambda: stack.domain_status()["paged_pages"] >= 32)
            gfn = min(pager.store.rows)
            own_deletes: list[list[tuple[int, int]]] = []
            delete_rows = pager.store.delete_rows

            async def spied(keys: Any) -> None:
                own_deletes.append(list(keys))
                await delete_rows(keys)

            pager.store.delete_rows = spied  # type: ignore[method-assign]
            io.armed = True
            await stack.set_target(NR - 48)  # one more batch, whose sync is held
            await io.held.wait()
            await guest.read_check(0, gfn)  # a fault served while the phase is held
            await stack.until(pager, lambda: bool(pager.commit.free_later))  # handed over
            io.release.set()
            await stack.until(pager, lambda: gfn not in pager.store.rows)
            assert own_deletes == []
            await guest.verify_all(VCPUS)
            await run.stop_ok()
            stack.assert_clean()


@pytest.mark.parametrize("cache", [True, False])
async def test_the_pager_counts_where_its_reads_came_from(tmp_path: Path, cache: bool) -> None:
    """`cached_reads` (page cache, no thread) and `disk_reads` (a worker thread): what the
    bench needs to tell a warm-cache populate from one that went to the disk."""
    with trio.fail_after(30):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=VCPUS) as stack, stack.guest() as guest:
            await guest.fill(VCPUS)
            disk = HookedDisk(RealDisk(stack.state_dir), no_cache=not cache)
            run = stack.start_pager(PagerConfig(batch=32), disk=disk)
            pager = await run.wait_started()
            await stack.set_target(NR // 2)
            await stack.until(pager, lambda: stack.domain_status()["tot_pages"] <= NR // 2)
            await guest.verify_all(VCPUS)
            stats = pager.stats
            reads = stats.cached_reads + stats.disk_reads
            assert reads >= stats.paged_in > 0
            if cache:  # just written: in the page cache (a few may have left it meanwhile)
                assert stats.cached_reads > 0
            else:
                assert stats.cached_reads == 0 and stats.disk_reads == reads
            await run.stop_ok()
