"""Paging corner cases against the real hv: DROP_PAGE, EVICT_FAIL, duplicates, ENOMEM,
disk faults, a corrupted slot, target changes, hello EBUSY and a connection cut."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import structlog
import structlog.testing
import trio
import trio.testing
from hookdisk import HookedDisk
from pager_harness import Guest, PagerRun, RunStatus, Stack, open_stack

from pager import (
    ConnectionLost,
    Faults,
    PagerConfig,
    PagerError,
    RealDisk,
    open_store,
    run_pager,
)
from pager.store import PAGES
from pager.store_format import RECORD_SIZE, record_offset, slot_offset
from protocol import Errno, OpError, P2MType

NR = 64


def config(**kw: object) -> PagerConfig:
    """Small batches, quick rechecks."""
    base: dict[str, object] = dict(batch=8, concurrency=2, recheck_interval=0.05)
    base.update(kw)
    return PagerConfig(**base)  # type: ignore[arg-type]


def paged(stack: Stack) -> list[int]:
    """gfns of domain 1 that are `paged` now."""
    types = stack.hv.domains[1].p2m.types
    return [g for g in range(stack.hv.config.nr_gfns) if types[g] == P2MType.paged]


async def paged_out(stack: Stack, guest: Guest, target: int, **kw: object) -> PagerRun:
    """Fill the guest, start a pager with `target`, wait until it is reached. No reserve
    unless asked: with one, the pager goes on paging out below the target after this
    returns (the ENOMEM test counted the host's free frames meanwhile)."""
    await guest.fill(2)
    kw.setdefault("reserve", 0)
    run = stack.start_pager(config(target=target, **kw))
    pager = await run.wait_started()
    await stack.until(pager, lambda: stack.domain_status()["tot_pages"] <= target)
    return run


async def stop_clean(stack: Stack, guest: Guest, run: PagerRun, *, lost: int = 0) -> None:
    """Stop the pager (page in, detach), check invariants and every byte."""
    await run.stop_ok()
    assert run.stats is not None and run.stats.detached
    assert run.stats.lost == lost
    assert run.pager is not None and run.pager.store.rows == {}  # no stale row left behind
    stack.assert_clean()
    assert stack.domain_status()["paged_pages"] == 0
    await guest.verify_all(2)


async def test_drop_page_frees_the_copy(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=2) as stack, stack.guest() as guest:
            run = await paged_out(stack, guest, 16)
            pager = run.pager
            assert pager is not None
            gfn = paged(stack)[0]
            assert gfn in pager.store.rows
            reply = await guest.client.call("decrease_reservation", gfns=[gfn])
            assert reply["results"] == [0]
            await stack.until(pager, lambda: pager.stats.drops >= 1)
            assert gfn not in pager.store.rows
            assert stack.domain_status()["ring"]["used"] == 0
            reply = await guest.client.call("increase_reservation", gfns=[gfn])
            assert reply["results"] == [0]
            guest.versions[gfn] = 0  # ballooned back in: a zeroed page
            await stop_clean(stack, guest, run)


class _Hook(Faults):
    """Calls `action(point)` at every crash point instead of crashing."""

    def __init__(self, action: object) -> None:
        super().__init__()
        self.action = action

    def hit(self, point: str) -> None:
        self.action(point)  # type: ignore[operator]


async def test_evict_fail_needs_only_a_resume(tmp_path: Path) -> None:
    """The guest writes a nominated gfn before its evict: evict answers EBUSY, the row is
    freed, the EVICT_FAIL request is answered with a resume, the write lands."""
    with trio.fail_after(20):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=2) as stack, stack.guest() as guest:
            await guest.fill(2)
            written: list[int] = []
            landed = trio.Event()

            async def write(gfn: int) -> None:
                await guest.write(1, gfn, 7)
                landed.set()

            def on_point(point: str) -> None:
                if point == "after_nominate" and not written:
                    types = stack.hv.domains[1].p2m.types
                    gfn = next(g for g in range(NR) if types[g] == P2MType.paging_out)
                    written.append(gfn)
                    stack.nursery.start_soon(write, gfn)

            run = stack.start_pager(config(target=16), faults=_Hook(on_point))
            pager = await run.wait_started()
            await landed.wait()
            await stack.until(pager, lambda: stack.domain_status()["tot_pages"] <= 16)
            assert pager.stats.evict_busy >= 1
            assert guest.versions[written[0]] == 7
            await guest.read_check(0, written[0])
            await stop_clean(stack, guest, run)


async def test_duplicate_requests_share_one_read(tmp_path: Path) -> None:
    """Four vCPUs touch one paged gfn: four requests, one slot read, four vCPUs resumed."""
    with trio.fail_after(20):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=4) as stack, stack.guest() as guest:
            await guest.fill(4)
            io = HookedDisk(RealDisk(stack.state_dir), no_cache=True)
            run = stack.start_pager(config(target=16, concurrency=1), disk=io)
            pager = await run.wait_started()
            await stack.until(pager, lambda: stack.domain_status()["tot_pages"] <= 16)
            gfn = paged(stack)[0]
            before_reads, before_requests = io.reads, pager.stats.requests
            async with trio.open_nursery() as nursery:
                for v in range(4):
                    nursery.start_soon(guest.read_check, v, gfn)
            assert pager.stats.requests - before_requests == 4
            assert io.reads - before_reads == 1
            assert stack.domain_status()["paused_vcpus"] == []
            await stop_clean(stack, guest, run)


async def test_enomem_on_prep_is_retried(tmp_path: Path) -> None:
    """No free host frame: prep answers ENOMEM, the pager retries with backoff and keeps
    serving; once frames are free again the paused vCPU resumes with its bytes."""
    with trio.fail_after(20):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=2, host_frames=NR) as stack:
            async with stack.guest() as guest:
                run = await paged_out(stack, guest, 16)
                pager = run.pager
                assert pager is not None
                free = stack.hv.status()["host"]["free"]
                async with stack.client("control", None) as control:
                    hog = await control.call("domain_create", nr_gfns=free, vcpus=1)
                    assert stack.hv.status()["host"]["free"] == 0
                    gfn = paged(stack)[0]
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(guest.read_check, 0, gfn)
                        await stack.until(pager, lambda: pager.stats.prep_enomem >= 2)
                        assert stack.domain_status()["paused_vcpus"] == [0]
                        # Other requests are served meanwhile: a DROP_PAGE, for one.
                        other = next(g for g in paged(stack) if g != gfn)
                        reply = await guest.client.call("decrease_reservation", gfns=[other])
                        assert reply["results"] == [0]
                        await stack.until(pager, lambda: pager.stats.drops == 1)
                        assert other not in pager.store.rows
                        assert stack.domain_status()["paused_vcpus"] == [0]
                        await control.call("domain_destroy", domid=hog["domid"])
                await guest.client.call("increase_reservation", gfns=[other])
                guest.versions[other] = 0
                await stop_clean(stack, guest, run)


async def test_enospc_stops_paging_out_keeps_paging_in(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=2) as stack, stack.guest() as guest:
            await guest.fill(2)
            # Each disk phase (batches that share a sync) makes one write: the first phase
            # makes it, every later one finds the disk full. One batch on its way at a
            # time, so that there is a later phase (a pipeline starts all 7 together).
            run = stack.start_pager(config(target=8, pipeline=1), faults="store.write=ENOSPC@2+")
            pager = await run.wait_started()
            await stack.until(
                pager,
                lambda: (
                    pager.stats.store_full >= 1
                    and 8 <= pager.stats.paged_out == stack.domain_status()["paged_pages"]
                ),
            )
            assert pager.stats.paged_out < NR - 8  # nothing after the first phase
            await guest.verify_all(2)  # every page-in is still served
            assert stack.domain_status()["paged_pages"] == 0  # all came back in
            # The nominated gfns of the failed batch are resident and adopted later.
            await run.stop_ok()
            stack.assert_clean()
            await guest.verify_all(2)


@pytest.mark.parametrize("spec", ["store.write=EIO@2", "store.fsync=EIO@2", "store.commit=EIO@2"])
async def test_eio_on_page_out_loses_nothing(tmp_path: Path, spec: str) -> None:
    with trio.fail_after(30):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=2) as stack, stack.guest() as guest:
            await guest.fill(2)
            # One batch on its way at a time: a pipeline would start all 6 together, in
            # one disk phase, and there would be no second one to fail.
            run = stack.start_pager(config(target=16, pipeline=1), faults=spec)
            pager = await run.wait_started()
            await stack.until(pager, lambda: stack.domain_status()["tot_pages"] <= 16)
            assert pager.stats.store_errors == 1
            await guest.verify_all(2)
            await stop_clean(stack, guest, run)


async def test_transient_read_faults_are_retried(tmp_path: Path) -> None:
    """One EIO and one flipped byte on the way in: re-read, right bytes, nothing lost."""
    with trio.fail_after(20):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=2) as stack, stack.guest() as guest:
            await guest.fill(2)
            run = stack.start_pager(
                config(target=16), faults="store.read=EIO@1,store.read=corrupt@3"
            )
            pager = await run.wait_started()
            await stack.until(pager, lambda: stack.domain_status()["tot_pages"] <= 16)
            await guest.verify_all(2)
            assert pager.stats.read_errors >= 1
            assert pager.stats.checksum_errors >= 1
            await stop_clean(stack, guest, run)


async def test_persistent_read_eio_gives_the_guest_eio(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=2) as stack, stack.guest() as guest:
            await guest.fill(2)
            run = stack.start_pager(
                config(target=16, drain_timeout=0.5), faults="store.read=EIO@1+"
            )
            pager = await run.wait_started()
            await stack.until(pager, lambda: stack.domain_status()["tot_pages"] <= 16)
            gfn = paged(stack)[0]
            with pytest.raises(OpError) as info:
                await guest.read_check(0, gfn)
            assert info.value.errno == Errno.EIO
            assert pager.stats.lost == 1
            assert stack.domain_status()["counts"]["broken"] == 1
            assert stack.domain_status()["paused_vcpus"] == []
            # Nothing can be read back: the exit cannot page in, and says so.
            run.stop.set()
            await run.finished.wait()
            assert isinstance(run.error, PagerError)
            assert "could not page everything in" in str(run.error)


async def test_corrupted_slot_gives_eio_never_wrong_bytes(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=2) as stack, stack.guest() as guest:
            run = await paged_out(stack, guest, 16)
            pager = run.pager
            assert pager is not None
            gfn = paged(stack)[0]
            slot = pager.store.rows[gfn].slot
            fd = os.open(stack.state_dir / PAGES, os.O_RDWR)
            try:
                os.pwrite(fd, b"\xff" * 16, slot_offset(slot) + 100)  # bit rot on the disk
            finally:
                os.close(fd)
            with pytest.raises(OpError) as info:
                await guest.read_check(0, gfn)
            assert info.value.errno == Errno.EIO
            assert pager.stats.checksum_errors >= 1
            assert pager.stats.lost == 1
            assert gfn not in pager.store.rows
            # Every other page is intact; the broken one stays an error, never wrong bytes.
            others = [g for g in range(NR) if g != gfn]
            await guest.on_vcpus(2, others, guest.read_check)
            await run.stop_ok()
            assert stack.hv.check() == []


async def test_target_down_and_up(tmp_path: Path) -> None:
    """Without a reserve the pager holds the target exactly (test_pager_balance.py has the
    reserve's)."""
    with trio.fail_after(20):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=2) as stack, stack.guest() as guest:
            await guest.fill(2)
            run = stack.start_pager(config(reserve=0))
            pager = await run.wait_started()
            for target in (16, 48, 8, NR):
                await stack.set_target(target)
                await stack.until(
                    pager,
                    lambda t=target: stack.domain_status()["tot_pages"] == t,  # type: ignore[misc]
                )
                st = stack.domain_status()
                assert st["paged_pages"] == NR - target
                # Page-ins free their rows (in the background, one commit for many).
                await stack.until(pager, lambda t=target: len(pager.store.rows) == NR - t)  # type: ignore[misc]
            assert pager.stats.proactive_in >= 32 + 56
            await guest.verify_all(2)
            await stop_clean(stack, guest, run)


async def test_hello_ebusy_is_retried_until_the_old_pager_leaves(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=2) as stack, stack.guest() as guest:
            first = stack.start_pager(config())
            await first.wait_started()
            second = stack.start_pager(config(), state_dir=tmp_path / "other")
            with trio.move_on_after(0.3):
                await second.started.wait()
            assert not second.started.is_set()  # refused with EBUSY, retrying
            first.stop.set()
            await first.finished.wait()
            await second.wait_started()
            await stop_clean(stack, guest, second)


async def test_hello_ebusy_gives_up_after_its_bound(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=2) as stack:
            first = stack.start_pager(config())
            await first.wait_started()
            second = stack.start_pager(config(hello_timeout=0.2), state_dir=tmp_path / "other")
            await second.finished.wait()
            assert isinstance(second.error, PagerError)
            assert "EBUSY" in str(second.error)
            first.stop.set()
            await first.finished.wait()


async def test_second_pager_on_one_store_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=2) as stack:
            first = stack.start_pager(config())
            await first.wait_started()
            second = stack.start_pager(config(lock_timeout=0.2))
            await second.finished.wait()
            assert isinstance(second.error, PagerError)
            assert "locked" in str(second.error)
            first.stop.set()
            await first.finished.wait()


async def test_connection_cut_mid_frame(tmp_path: Path) -> None:
    """The pager's connection dies half-way through a frame from hv: the pager ends with
    ConnectionLost (the stack restarts it) and its successor loses nothing."""
    with trio.fail_after(20):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=2) as stack, stack.guest() as guest:
            await guest.fill(2)
            pager_end, proxy_end = trio.testing.memory_stream_pair()
            hv_end = stack.connect("privcmd.sock")
            cut = trio.Event()
            run = PagerRun()

            async def upstream() -> None:
                with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                    while data := await proxy_end.receive_some(65536):
                        await hv_end.send_all(data)

            async def downstream() -> None:
                while True:
                    data = await hv_end.receive_some(65536)
                    if cut.is_set() and len(data) > 8:
                        await proxy_end.send_all(data[: len(data) // 2])
                        await proxy_end.aclose()
                        await hv_end.aclose()
                        return
                    await proxy_end.send_all(data)

            async def pager() -> None:
                try:
                    store = await open_store(RealDisk(stack.state_dir), lock_timeout=1.0)
                    await run_pager(
                        pager_end,
                        store,
                        config(target=16),
                        stop=run.stop,
                        task_status=RunStatus(run),  # type: ignore[arg-type]
                    )
                except Exception as exc:
                    run.error = exc
                finally:
                    run.finished.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(upstream)
                nursery.start_soon(downstream)
                nursery.start_soon(pager)
                await run.started.wait()
                cut.set()
                await run.finished.wait()
                nursery.cancel_scope.cancel()
            assert isinstance(run.error, ConnectionLost)
            last = stack.start_pager(config(target=16))
            pager_ = await last.wait_started()
            await stack.until(pager_, lambda: stack.domain_status()["tot_pages"] <= 16)
            await guest.verify_all(2)
            await stop_clean(stack, guest, last)


async def test_store_of_another_hv_instance_is_set_aside(tmp_path: Path) -> None:
    """hv restarted (a new instance) with the volume kept: the old store is set aside,
    never mixed into the new memory, and the new domain pages normally."""
    with trio.fail_after(20):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=2) as stack, stack.guest() as guest:
            run = await paged_out(stack, guest, 16, on_exit="keep")
            await run.stop_ok()
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=2) as stack, stack.guest() as guest:
            run = await paged_out(stack, guest, 16)
            assert run.pager is not None and run.pager.stats.recovered_rows == 0
            assert run.pager.stats.lost == 0
            assert len([p for p in os.listdir(tmp_path / "state") if p.startswith("aside-")]) == 1
            await guest.verify_all(2)
            await stop_clean(stack, guest, run)


async def test_prefetch_brings_neighbours_in_first(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=2) as stack, stack.guest() as guest:
            await guest.fill(2)
            run = stack.start_pager(config(prefetch=4, reserve=0))
            pager = await run.wait_started()
            await stack.set_target(16)
            await stack.until(pager, lambda: stack.domain_status()["tot_pages"] <= 16)
            out = set(paged(stack))
            gfn = next(g for g in sorted(out) if all(g + i in out for i in range(1, 5)))
            await guest.read_check(0, gfn)  # a fault: its paged neighbours are noted
            await stack.until(pager, lambda: stack.domain_status()["tot_pages"] <= 16)
            await stack.set_target(16 + 4)  # room for four proactive page-ins
            await stack.until(pager, lambda: stack.domain_status()["tot_pages"] == 20)
            now_out = set(paged(stack))
            assert all(gfn + i not in now_out for i in range(1, 5)), "neighbours came in"
            await stop_clean(stack, guest, run)


def _zero_record(pages: Path, slot: int) -> None:
    with open(pages, "r+b") as f:
        f.seek(record_offset(slot))
        f.write(bytes(RECORD_SIZE))


async def test_paged_gfn_without_a_row_is_reported_lost_at_recovery(tmp_path: Path) -> None:
    """The store lost a row (a bug elsewhere, a restored backup): the next pager reports
    that gfn lost with its number and marks it broken; the guest gets EIO for it, and
    every other byte is intact."""
    with trio.fail_after(20):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=2) as stack, stack.guest() as guest:
            run = await paged_out(stack, guest, 16, on_exit="keep")
            run.stop.set()
            await run.finished.wait()
            gfn = paged(stack)[0]
            slot = run.pager.store.rows[gfn].slot  # type: ignore[union-attr]
            _zero_record(stack.state_dir / PAGES, slot)  # no row names it any more
            with structlog.testing.capture_logs() as logs:
                run = stack.start_pager(config(target=16))
                pager = await run.wait_started()
            assert pager.stats.lost == 1
            assert {"event": "page.lost", "gfn": gfn, "log_level": "error"}.items() <= next(
                e for e in logs if e["event"] == "page.lost"
            ).items()
            assert stack.domain_status()["counts"]["broken"] == 1
            with pytest.raises(OpError) as info:
                await guest.read_check(0, gfn)
            assert info.value.errno == Errno.EIO
            others = [g for g in range(NR) if g != gfn]
            await guest.on_vcpus(2, others, guest.read_check)
            await run.stop_ok()
            stack.assert_clean()
