"""hv + pager + a scripted guest in one trio run: page out, page in, every byte checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from pager_harness import open_stack

from pager import PagerConfig

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
