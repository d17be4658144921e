"""Every crash point of the enumeration is reached, on the event loop, by an ordinary run."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio
import trio.lowlevel
from pager_harness import open_stack

from pager import CrashPoint, PagerConfig, parse_faults

NR = 128
VCPUS = 2


class PassRecorder:
    """A crash action that records each pass instead of crashing, and where it ran."""

    def __init__(self) -> None:
        self.passes: dict[str, int] = {}
        self.off_loop: list[str] = []
        self._loop_thread = threading.get_ident()

    def __call__(self, point: str) -> None:
        self.passes[point] = self.passes.get(point, 0) + 1
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            self.off_loop.append(point)  # not in a trio task: a worker thread
            return
        if threading.get_ident() != self._loop_thread:
            self.off_loop.append(point)


async def test_every_crash_point_is_reached_on_the_event_loop(tmp_path: Path) -> None:
    """Arm every point of `CrashPoint` (from the code, not a copied list) to fire on every
    pass, with an action that only records: recovery, page-out (one batch per request:
    `batch=MAX`, and pipelined), demand page-in (inline and by the workers) and the exit
    pass each point at least once, and always on the event loop's thread."""
    recorder = PassRecorder()
    spec = ",".join(f"{p}@1+" for p in CrashPoint)
    with trio.fail_after(30):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=VCPUS) as stack, stack.guest() as guest:
            await guest.fill(VCPUS)
            run = stack.start_pager(
                PagerConfig(batch=16, recheck_interval=0.05),
                faults=parse_faults(spec, crash=recorder),
            )
            pager = await run.wait_started()
            await stack.set_target(NR // 4)
            await stack.until(pager, lambda: stack.domain_status()["tot_pages"] <= NR // 4)
            await guest.verify_all(VCPUS)
            await run.stop_ok()
            stack.assert_clean()
    assert recorder.off_loop == []
    assert sorted(recorder.passes) == sorted(p.value for p in CrashPoint)


async def test_the_recorder_catches_a_point_passed_in_a_worker_thread() -> None:
    """The check above can fail: a point passed from a worker thread is reported."""
    recorder = PassRecorder()
    faults = parse_faults("after_write@1+", crash=recorder)
    faults.hit(CrashPoint.after_write)
    await trio.to_thread.run_sync(faults.hit, CrashPoint.after_write)
    assert recorder.passes == {"after_write": 2}
    assert recorder.off_loop == ["after_write"]


@pytest.mark.parametrize("streams", ["socket", "memory"])
async def test_inline_page_in_runs_over_any_stream(tmp_path: Path, streams: str) -> None:
    """The pager's inline page-in (started in the connection's reader, when the writer is
    idle and the slots are in the page cache) runs over memory streams as over sockets."""
    with trio.fail_after(30):
        async with (
            open_stack(tmp_path, streams=streams, nr_gfns=NR, vcpus=VCPUS) as stack,
            stack.guest() as guest,
        ):
            await guest.fill(VCPUS)
            run = stack.start_pager(PagerConfig(batch=16, target=NR // 2, on_exit="keep"))
            pager = await run.wait_started()
            await stack.until(pager, lambda: stack.domain_status()["tot_pages"] <= NR // 2)
            # One vCPU, one page at a time: each fault finds the pager idle.
            for gfn in range(NR):
                await guest.read_check(0, gfn)
            assert pager.stats.paged_in > 0
            assert pager.stats.inline_pageins > 0
            await run.stop_ok()
