"""Crash the pager at every named point under a workload, restart it, lose nothing.

Each test runs hv, a scripted guest and successive pagers on one state directory in one
trio run. A crash point raises `SimulatedCrash`: the pager task is abandoned (no page-in,
no detach, store descriptors dropped), its connection closes as a dead process's would,
and the next pager has nothing but the state directory.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import trio
from pager_harness import Guest, PagerRun, Stack, open_stack, page_bytes

from pager import CrashPoint, PagerConfig, PageStore, RealDisk, SimulatedCrash
from protocol import P2MType

NR = 192
VCPUS = 4
TARGET = 48

# From the enumeration in the code: a point added there is crash-tested here.
PAGEOUT_POINTS = [p.value for p in CrashPoint if p.phase == "pageout"]
PAGEIN_POINTS = [p.value for p in CrashPoint if p.phase == "pagein"]
RECOVERY_POINTS = [p.value for p in CrashPoint if p.phase == "recovery"]


def config(**kw: object) -> PagerConfig:
    """Small batches and a short recheck, so a few hundred pages see many batches."""
    base: dict[str, object] = dict(batch=16, concurrency=2, recheck_interval=0.05, pipeline=2)
    base.update(kw)
    return PagerConfig(**base)  # type: ignore[arg-type]


async def workload(guest: Guest) -> None:
    """Touch every page (faults), rewrite a third of them, touch every page again."""
    await guest.verify_all(VCPUS)

    async def rewrite(v: int, g: int) -> None:
        await guest.write(v, g, guest.versions[g] + 1)

    await guest.on_vcpus(VCPUS, list(range(0, NR, 3)), rewrite)
    await guest.verify_all(VCPUS)


async def finish(stack: Stack, guest: Guest, run: PagerRun) -> None:
    """Stop the last pager (page everything in, detach) and check every byte and invariant."""
    await run.stop_ok()
    assert run.stats is not None
    assert run.stats.lost == 0
    assert run.stats.detached
    assert run.pager is not None and run.pager.store.rows == {}  # no stale row left behind
    st = stack.domain_status()
    assert st["paged_pages"] == 0
    assert st["counts"]["broken"] == 0
    stack.assert_clean()
    await guest.verify_all(stack.hv.config.vcpus)


async def check_store_covers(stack: Stack, guest: Guest) -> None:
    """Invariant 4, checked on the dead pager's state directory: every frameless gfn in the
    paging path has a durable copy whose bytes are the last ones the guest wrote."""
    p2m = stack.hv.domains[1].p2m
    store = await PageStore.open(RealDisk(stack.state_dir), lock_wait=1.0)
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
        await store.close()


async def settle(stack: Stack, run: PagerRun) -> None:
    """Wait until `run` has paged out to the target, or has ended (crashed)."""
    async with trio.open_nursery() as nursery:

        async def ended() -> None:
            await run.finished.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(ended)
        await run.started.wait()
        assert run.pager is not None
        await stack.until(run.pager, lambda: stack.domain_status()["tot_pages"] <= TARGET)
        nursery.cancel_scope.cancel()


async def crash_then_recover(tmp_path: Path, faults: str, *more_faults: str) -> list[PagerRun]:
    """Run the workload under pagers crashing per `faults`, `more_faults`, then a clean one."""
    runs: list[PagerRun] = []
    async with open_stack(tmp_path, nr_gfns=NR, vcpus=VCPUS) as stack, stack.guest() as guest:
        await guest.fill(VCPUS)
        await stack.set_target(TARGET)
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def run_workload() -> None:
                await workload(guest)
                done.set()

            for i, spec in enumerate((faults, *more_faults)):
                run = stack.start_pager(config(), faults=spec)
                runs.append(run)
                if i == 0:
                    # Fault pages in only once they are out: start the guest after page-out.
                    await settle(stack, run)
                    nursery.start_soon(run_workload)
                await run.finished.wait()
                assert isinstance(run.error, SimulatedCrash), f"{spec}: {run.error!r}"
                await check_store_covers(stack, guest)
            assert not done.is_set()
            last = stack.start_pager(config())
            runs.append(last)
            await last.wait_started()
            await done.wait()
        await finish(stack, guest, last)
    return runs


@pytest.mark.parametrize("point", PAGEOUT_POINTS + PAGEIN_POINTS)
async def test_crash_point_loses_nothing(tmp_path: Path, point: str) -> None:
    # Die on a pass that comes after a committed batch. Up to `pipeline` batches are
    # nominated and mapped at once, so only the one after those is sure to follow a commit;
    # disk phases (write, sync, commit) run one after another.
    n = config().pipeline + 1 if point in ("after_nominate", "after_map") else 2
    with trio.fail_after(40):
        runs = await crash_then_recover(tmp_path, f"{point}@{n}")
    crashed, last = runs[0], runs[-1]
    assert isinstance(crashed.error, SimulatedCrash) and crashed.error.point == point
    assert last.stats is not None
    # The new pager found the old one's pages in the store and served them.
    assert last.stats.recovered_rows > 0
    if point in ("after_read", "before_resume"):
        # A request was delivered to the dead pager and never answered: it comes again.
        # (`after_prep` comes after the resume is sent: prep and resume go back to back.)
        assert last.stats.redelivered > 0


async def test_crash_during_recovery(tmp_path: Path) -> None:
    """A pager dies after its commit; its successors die inside recovery, twice; a fourth
    one still loses nothing."""
    with trio.fail_after(40):
        runs = await crash_then_recover(
            tmp_path, "after_index_commit@3", *(f"{p}@1" for p in RECOVERY_POINTS)
        )
    assert [r.error.point for r in runs[: 1 + len(RECOVERY_POINTS)]] == [  # type: ignore[union-attr]
        "after_index_commit",
        *RECOVERY_POINTS,
    ]


async def test_redelivered_request_is_served(tmp_path: Path) -> None:
    """A paged gfn's request reaches a pager that dies before answering; the vCPU stays
    paused until the next pager is attached, which gets the request again and serves it."""
    with trio.fail_after(20):
        async with open_stack(tmp_path, nr_gfns=64, vcpus=2) as stack, stack.guest() as guest:
            await guest.fill(2)
            keeper = stack.start_pager(config(target=8, on_exit="keep"))
            pager = await keeper.wait_started()
            await stack.until(pager, lambda: stack.domain_status()["tot_pages"] <= 8)
            keeper.stop.set()
            await keeper.finished.wait()
            assert keeper.error is None
            types = stack.hv.domains[1].p2m.types
            gfn = next(g for g in range(64) if types[g] == P2MType.paged)
            dying = stack.start_pager(config(target=8), faults="before_resume@1")
            await dying.wait_started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(guest.read_check, 0, gfn)
                await dying.finished.wait()
                assert isinstance(dying.error, SimulatedCrash)
                assert stack.domain_status()["paused_vcpus"] == [0]
                last = stack.start_pager(config(target=8))
                await last.wait_started()
            # The read above returned the right bytes once the new pager served it.
            await finish(stack, guest, last)
            assert last.stats is not None and last.stats.redelivered >= 1


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(int(os.environ.get("XPEMU_STORMS", "8"))))
async def test_random_crash_storm(tmp_path: Path, seed: int) -> None:
    """Pagers die at random points with random probabilities, one after another, under a
    workload of faults and rewrites; the last one still loses nothing."""
    rng = random.Random(seed)
    specs = []
    for i in range(6):
        points = rng.sample(PAGEOUT_POINTS + PAGEIN_POINTS, 3)
        specs.append(f"seed={seed * 100 + i}," + ",".join(f"{p}%0.1" for p in points))
    crashes = 0
    with trio.fail_after(120):
        async with open_stack(tmp_path, nr_gfns=NR, vcpus=VCPUS) as stack:
            async with stack.guest() as guest:
                await guest.fill(VCPUS)
                await stack.set_target(TARGET)
                async with trio.open_nursery() as nursery:
                    done = trio.Event()

                    async def run_workload() -> None:
                        for _ in range(3):
                            await workload(guest)
                        done.set()

                    for i, spec in enumerate(specs):
                        if done.is_set():
                            break
                        policy = rng.choice(["xenpaging", "clock"])
                        run = stack.start_pager(config(policy=policy), faults=spec)
                        if i == 0:
                            await settle(stack, run)
                            nursery.start_soon(run_workload)
                        async with trio.open_nursery() as inner:

                            async def stop_when_done(run: PagerRun = run) -> None:
                                await done.wait()
                                run.stop.set()

                            inner.start_soon(stop_when_done)
                            await run.finished.wait()
                            inner.cancel_scope.cancel()
                        if isinstance(run.error, SimulatedCrash):
                            crashes += 1
                            await check_store_covers(stack, guest)
                        elif run.error is not None:
                            raise AssertionError(f"{spec}: {run.error!r}")
                    last = stack.start_pager(config())
                    await last.wait_started()
                    await done.wait()
                await finish(stack, guest, last)
    assert crashes >= 1  # the storm did blow
