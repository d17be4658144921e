"""The balancer under a mock clock: a step that does nothing never counts as a step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from memdisk import MemDisk
from pager_harness import open_stack

from pager import PagerConfig
from pager.balance import Balancer, plan_step
from protocol import P2MType

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


# -- the reserve ------------------------------------------------------------------------


def _old_step(tot: int, paged: int, target: int) -> int:
    """The balancer's step before the reserve: only what exceeds the target goes out."""
    if tot > target:
        return tot - target
    if tot < target and paged > 0:
        return -(target - tot)
    return 0


def test_without_a_reserve_the_step_is_the_old_one() -> None:
    for tot in range(0, 40):
        for paged in range(0, 40):
            for target in range(0, 40):
                new, old = plan_step(tot, paged, target, 0), _old_step(tot, paged, target)
                # The old step asked to page in target - tot; proactive page-in takes at
                # most the paged gfns there are, so the two agree up to that.
                assert new == old or (new < 0 and old < 0 and -new == min(-old, paged)), (
                    tot,
                    paged,
                    target,
                )


@pytest.mark.parametrize("reserve", [0, 1, 2, 7, 16])
def test_a_step_is_never_undone_and_faults_never_page_in(reserve: int) -> None:
    """From any state, after a step is taken whole the next step is nothing; a fault
    (tot + 1, paged - 1) never asks for a page-in; and the reserve's page-outs refill it
    whole, in one step, only after half of it is used."""
    for tot in range(0, 50):
        for paged in range(0, 50):
            for target in range(0, 50):
                step = plan_step(tot, paged, target, reserve)
                t, p = tot - step, paged + step
                assert plan_step(t, p, target, reserve) == 0, (tot, paged, target, step)
                if p > 0 and t < target:  # a fault from the settled state
                    assert plan_step(t + 1, p - 1, target, reserve) >= 0
                if step > 0 and tot <= target:  # a refill of the reserve
                    assert target - tot < reserve and t == max(0, target - reserve)
                    assert step >= reserve - reserve // 2 or t == 0


def test_the_reserve_is_kept_below_the_target_and_refilled_at_half() -> None:
    # 100 gfns paged, target 200, reserve 16: page out to 184, page in only up to it.
    assert plan_step(200, 100, 200, 16) == 16
    assert plan_step(184, 116, 200, 16) == 0
    for used in range(1, 8):  # faults use the reserve; the refill waits for half of it
        assert plan_step(184 + used, 116 - used, 200, 16) == 0
    assert plan_step(192, 108, 200, 16) == 8  # half used: back down to 184 in one step
    assert plan_step(150, 150, 200, 16) == -34  # page in up to the reserve, not into it
    assert plan_step(190, 10, 200, 16) == -10  # all of them fit: no fault can overshoot
    assert plan_step(201, 99, 200, 16) == 17  # over the target: down to 184 at once


async def _faults_at_target(tmp_path: Path, reserve: int) -> tuple[list[int], int, int]:
    """Fault 48 paged gfns in one by one at a target of 128 of 256 (batch 8); the size
    of every page-out batch of the run after the target was first reached, the highest
    tot_pages seen after a fault, and the balancer's audits of hv's counters meanwhile."""
    nr, target = 256, 128
    batches: list[int] = []
    audits = 0
    async with open_stack(tmp_path, streams="memory", nr_gfns=nr, vcpus=2) as stack:
        async with stack.guest() as guest:
            await guest.fill(2)
            config = PagerConfig(batch=8, recheck_interval=0.05, target=target, reserve=reserve)
            run = stack.start_pager(config, disk=MemDisk())
            pager = await run.wait_started()
            await stack.until(pager, lambda: stack.domain_status()["tot_pages"] <= target - reserve)
            pageout = pager.pageout.pageout

            async def counted(gfns: list[int], *, nominate: bool) -> int | None:
                batches.append(len(gfns))
                return await pageout(gfns, nominate=nominate)

            pager.pageout.pageout = counted  # type: ignore[method-assign]
            hv = pager.balancer.hv
            audit = hv.audit

            async def audited(start: int, count: int) -> Any:
                nonlocal audits
                audits += count == 0
                return await audit(start, count)

            hv.audit = audited  # type: ignore[method-assign]
            types = stack.hv.domains[1].p2m.types
            out = [g for g in range(nr) if types[g] == P2MType.paged][:48]
            highest = 0

            def settled() -> bool:
                st = stack.domain_status()
                return plan_step(st["tot_pages"], st["paged_pages"], target, reserve) == 0

            for gfn in out:
                await guest.read_check(0, gfn)
                highest = max(highest, stack.domain_status()["tot_pages"])
                await stack.until(pager, settled)  # the balancer's step is done
            seen, seen_audits = list(batches), audits
            await guest.verify_all(2)
            await run.stop_ok()
            stack.assert_clean()
    return seen, highest, seen_audits


@pytest.mark.parametrize("reserve", [0, 16])
async def test_with_a_reserve_faults_at_the_target_page_out_in_batches(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, reserve: int
) -> None:
    """A guest at its target faulting gfns in one at a time: without a reserve every
    fault costs a page-out of one gfn, after tot_pages went over the target; with a
    reserve of two batches the faults take free frames, and the refills go in whole
    batches, with tot_pages never over the target; and the balancer, counting its own
    page-ins, asks hv for its counters only when a refill may be due."""
    with trio.fail_after(60):
        batches, highest, audits = await _faults_at_target(tmp_path, reserve)
    if reserve:
        assert highest <= 128
        assert batches and min(batches) == 8  # whole batches only
        assert sum(batches) >= 48 - reserve  # the faults' frames came back
        assert len(batches) <= 48 // 8
        assert audits <= 2 * len(batches) + 2  # one to see a refill is due, one after it
    else:
        assert highest == 129  # each fault went over the target
        assert batches.count(1) >= 40  # and cost a batch of one
        assert audits >= 48  # and an audit at least
