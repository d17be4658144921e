"""hv + pager + a scripted guest in one trio run: page out, page in, every byte checked."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio
from pager_harness import open_stack

from pager import PagerConfig
from pager.store import DiskIO

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
            run.stop.set()
            await run.finished.wait()
            assert run.error is None, repr(run.error)
            assert run.stats is not None and run.stats.detached
            st = stack.domain_status()
            assert st["paged_pages"] == 0
            assert st["pager"]["attached"] is False
            stack.assert_clean()
            await guest.verify_all(VCPUS)


class _HeldSyncIO(DiskIO):
    """Counts syncs and writes; the first fdatasync waits until the test lets it go."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.syncs = 0
        self.writes = 0

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        self.writes += 1
        super().pwrite(fd, data, offset)

    def fdatasync(self, fd: int) -> None:
        self.syncs += 1
        if self.syncs == 1:
            assert self.release.wait(10), "the test never released the first sync"
        super().fdatasync(fd)


async def test_batches_ready_during_a_disk_phase_share_the_next_one(tmp_path: Path) -> None:
    """Group commit: while one batch's fdatasync runs, the next batches are nominated and
    mapped; they then share one fdatasync and one index commit. Nothing is evicted before
    its copy is durable, and every byte comes back."""
    with trio.fail_after(30):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=VCPUS) as stack, stack.guest() as guest:
            await guest.fill(VCPUS)
            io = _HeldSyncIO()
            run = stack.start_pager(PagerConfig(batch=16, pipeline=4), io=io)
            pager = await run.wait_started()
            await stack.set_target(NR - 64)  # four batches of 16
            # The first batch's disk phase is held; the three others queue behind it.
            await stack.until(pager, lambda: len(pager._group) == 3)
            assert stack.domain_status()["paged_pages"] == 0  # nothing evicted yet
            io.release.set()
            await stack.until(pager, lambda: stack.domain_status()["paged_pages"] >= 64)
            assert io.syncs == 2  # one for the first batch, one for the three others
            assert len(pager.store.rows) >= 64
            await guest.verify_all(VCPUS)
            run.stop.set()
            await run.finished.wait()
            assert run.error is None, repr(run.error)
            stack.assert_clean()
