"""The balancer under a mock clock: a step that does nothing never counts as a step."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from memdisk import MemDisk
from pager_harness import open_stack

from pager import PagerConfig
from pager.balance import Balancer

NR = 64

#: Balancer steps allowed in the test's 12 simulated seconds (an idle balancer rechecks
#: every 0.05 s: about 240 steps; a busy loop makes millions without time passing).
MAX_STEPS = 2_000


async def test_a_full_store_with_a_due_adoption_does_not_spin(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sim seed 341: one ENOSPC marks the pages file full (for FULL_RETRY s) and leaves the
    failed batch's gfns to adopt 1 s later; the next batch reuses its freed slots, so none
    is free when the adoption falls due, and adopting then takes no batch. The balancer
    counted that as a step and looped at once: for ever under a mock clock (no task ever
    idles, so time never moves), at 100% CPU until FULL_RETRY in a real process."""
    steps = 0
    once = Balancer.once

    async def counted(self: Balancer) -> bool:
        nonlocal steps
        steps += 1
        if steps > MAX_STEPS:
            raise AssertionError(f"the balancer spins: {steps} steps at t={trio.current_time()}")
        return await once(self)

    monkeypatch.setattr(Balancer, "once", counted)
    with trio.fail_after(60):
        async with open_stack(tmp_path, streams="memory", nr_gfns=NR, vcpus=2) as stack:
            async with stack.guest() as guest:
                await guest.fill(2)
                run = stack.start_pager(
                    PagerConfig(batch=8, concurrency=2, recheck_interval=0.05, target=8),
                    faults="store.write=ENOSPC@2",
                    disk=MemDisk(),
                )
                pager = await run.wait_started()
                store = pager.commit.store
                await stack.until(
                    pager, lambda: pager.stats.store_full >= 1 and store.free_slots == 0
                )
                assert pager.commit.full()
                assert pager.pageout.state.adopt, "the failed batch's gfns await adoption"
                await trio.sleep(12)  # past the adoption's due time and FULL_RETRY
                assert run.error is None, repr(run.error)
                assert not run.finished.is_set()
                assert steps > 10  # it kept balancing meanwhile
                await guest.verify_all(2)
                await run.stop_ok()
                stack.assert_clean()
