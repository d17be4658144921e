"""The freer: rows of paged-in copies wait `FREE_WAIT` for a page-out's disk phase to free
them with its own; a full pages file has them freed at once (`urge_frees`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing
from memdisk import MemDisk

from pager import PageStore, Row, checksum
from pager.commit import FREE_WAIT, Committer
from pager.config import PagerStats
from pager.faults import NO_FAULTS
from pager.state import PagerState
from protocol import PAGE_SIZE


async def _store_with_rows(n: int) -> tuple[PageStore, list[Row]]:
    store = await PageStore.open(MemDisk(), lock_wait=0)
    await store.bind_instance("inst")
    slots = store.reserve(n)
    gens = [store.next_gen() for _ in range(n)]
    pages = [bytes([g]) * PAGE_SIZE for g in range(n)]
    rows = [
        Row(g, gen, slot, checksum(g, gen, page))
        for g, gen, slot, page in zip(range(n), gens, slots, pages, strict=True)
    ]
    await store.persist(rows, pages)
    return store, rows


@asynccontextmanager
async def _freer() -> AsyncIterator[tuple[PageStore, list[Row], PagerState, Committer]]:
    """A store with two rows and a Committer whose freer runs, stopped on exit."""
    store, rows = await _store_with_rows(2)
    stats = PagerStats()
    state = PagerState(stats)
    commit = Committer(store, state, stats, NO_FAULTS)
    async with trio.open_nursery() as nursery:
        state.attach(nursery)
        nursery.start_soon(commit.freer)
        yield store, rows, state, commit
        nursery.cancel_scope.cancel()
    await store.close()


async def test_freed_rows_wait_for_a_disk_phase_and_go_after_free_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10 * FREE_WAIT):
        async with _freer() as (store, rows, state, commit):
            t0 = trio.current_time()
            commit.queue_free([(rows[0].gfn, rows[0].gen)])
            await trio.sleep(FREE_WAIT / 2)
            assert rows[0].gfn in store.rows  # still waiting for a phase to take it
            while rows[0].gfn in store.rows:
                await state.wait_progress()  # the freer notifies after its commit
            assert trio.current_time() - t0 >= FREE_WAIT
            assert rows[1].gfn in store.rows and not commit.pending_free


async def test_a_full_pages_file_has_the_freer_commit_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10 * FREE_WAIT):
        async with _freer() as (store, rows, state, commit):
            commit.urge_frees()  # nothing held: no effect on the next wait
            await trio.sleep(FREE_WAIT / 10)
            t0 = trio.current_time()
            commit.queue_free([(r.gfn, r.gen) for r in rows])
            await trio.sleep(FREE_WAIT / 100)
            assert rows[0].gfn in store.rows
            commit.urge_frees()  # the balancer found no room: ENOSPC and no free slot
            while rows[0].gfn in store.rows or rows[1].gfn in store.rows:
                await state.wait_progress()
            assert trio.current_time() - t0 < FREE_WAIT / 10
