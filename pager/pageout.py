"""Page-out: nominate, map, checksum, persist (group commit), evict, pipelined in batches.

A gfn is never frameless before its copy is durable: its batch is evicted only after the
disk phase that wrote, synced and committed it (`Committer.persist`). A crash leaves
either a resident gfn with a stale row (freed at reconcile) or a paged gfn with a durable,
checksummed copy; a gfn left `paging_out` is adopted (copied and evicted) later.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
import trio

from protocol import MAX_LIST, MAX_PAGES_PER_FRAME, P2MType

from .commit import Batch, Committer
from .config import PagerConfig, PagerStats
from .faults import CrashPoint, Faults
from .hvcalls import HvCalls
from .policy import Policy
from .rowindex import Row, rows_of
from .state import PagerState
from .store import StoreError
from .store_format import checksums

log = structlog.get_logger("pager")


class PageOut:
    """Pages gfns out in crash-safe batches (see the module docstring)."""

    def __init__(
        self,
        *,
        hv: HvCalls,
        state: PagerState,
        commit: Committer,
        policy: Policy,
        stats: PagerStats,
        config: PagerConfig,
        faults: Faults,
    ) -> None:
        self.hv = hv
        self.state = state
        self.commit = commit
        self.store = commit.store
        self.policy = policy
        self.stats = stats
        self.config = config
        self.faults = faults

    async def pageout(self, gfns: Sequence[int], *, nominate: bool) -> int | None:
        """Page out `gfns` (nominated here, or adopted leftovers); the number evicted, None
        if no batch got going (every gfn refused, or no slot). They are busy (claimed
        for page-out in the state) until this returns."""
        gfns = list(gfns)
        self.state.claim_out(gfns)
        try:
            batch = await self._prepare(gfns, nominate=nominate)
            return None if batch is None else await self._finish(batch)
        finally:
            self.state.release_out(gfns)
            self.state.notify()

    async def pipelined(self, excess: int) -> bool:
        """Page out `excess` gfns in batches, pipelined: up to `config.pipeline` batches are
        on their way at once, each in its own task (nominate and map, write, sync, commit,
        evict), and the disk phases of the batches that are ready together share one write
        and one sync (`Committer.persist`). Each batch keeps the crash-safe order: its
        slots and the records naming them are written, then synced (the commit), and it
        is evicted only after that sync returned. False if no batch got going."""
        slots = trio.Semaphore(self.config.pipeline)
        started = False

        async def one(victims: list[int]) -> None:
            nonlocal started
            try:
                if await self.pageout(victims, nominate=True) is not None:
                    started = True
            finally:
                slots.release()

        def going() -> bool:
            return excess > 0 and not self.state.stopping and not (started and self.commit.full())

        async with trio.open_nursery() as nursery:
            while going():
                await slots.acquire()
                # Every free place at once (the batches of a disk phase end together):
                # their first requests to hv go out in one write (`HvCalls`).
                while True:
                    want = min(self.config.batch, excess)
                    victims = await self.policy.choose(want, self.state.busy)
                    if not victims:
                        slots.release()
                        excess = 0  # nothing left to choose: no more batches
                        break
                    # Busy from now on: the next choice does not take them again.
                    self.state.claim_out(victims)
                    excess -= len(victims)
                    nursery.start_soon(one, victims)
                    if not going():
                        break
                    try:
                        slots.acquire_nowait()
                    except trio.WouldBlock:
                        break
        return started

    async def _nominate_and_map(self, gfns: list[int]) -> tuple[list[int], list[bytes]]:
        """nominate and map `gfns` in one write; the nominated gfns and their map results.

        A gfn whose nominate failed is mapped too (its copy is dropped): victims are
        resident as far as the policy knows, and if one was not, the map's FOREIGN
        populate brings it back in, which loses nothing."""
        results, pages = await self.hv.nominate_and_map(gfns)
        if gfns and not any(results):  # every gfn nominated (0, or an errno name)
            self.faults.hit(CrashPoint.after_nominate)
            return gfns, pages
        ok = [(g, p) for g, r, p in zip(gfns, results, pages, strict=True) if r == 0]
        self.stats.nominate_busy += len(gfns) - len(ok)
        if ok:
            self.faults.hit(CrashPoint.after_nominate)
        return [g for g, _ in ok], [p for _, p in ok]

    async def _prepare(self, gfns: list[int], *, nominate: bool) -> Batch | None:
        """Page-out, first half: reserve slots, nominate, map, checksum."""
        store = self.store
        full = self.commit.full()
        slots = store.reserve(len(gfns), grow=not full)
        if len(slots) < len(gfns):
            gfns = gfns[: len(slots)]  # nothing nominated yet: just do fewer
        if not gfns:
            store.release(slots)
            return None
        if nominate and len(gfns) <= min(MAX_LIST, MAX_PAGES_PER_FRAME):
            nominated, results = await self._nominate_and_map(gfns)
        else:
            if nominate:
                res = await self.hv.batched("nominate", gfns)
                nominated = [g for g, r in zip(gfns, res, strict=True) if r == 0]
                self.stats.nominate_busy += len(gfns) - len(nominated)
                if nominated:
                    self.faults.hit(CrashPoint.after_nominate)
            else:
                nominated = gfns
            results = await self.hv.map(nominated)
        if set(map(type, results)) <= {bytes}:  # the rule: every gfn mapped
            mapped, pages = nominated, results
        else:
            pages = []
            mapped = []
            for g, page in zip(nominated, results, strict=True):
                if isinstance(page, bytes):
                    mapped.append(g)
                    pages.append(page)
                else:
                    # No frame any more (ballooned out meanwhile): nothing to copy.
                    self.state.adopt.pop(g, None)
        if nominated:
            self.faults.hit(CrashPoint.after_map)
        store.release(slots[len(mapped) :])
        slots = slots[: len(mapped)]
        if not mapped:
            return None
        gens = store.next_gens(len(mapped))
        rows = rows_of(mapped, gens, slots, checksums(mapped, gens, pages))
        return Batch(mapped, slots, pages, rows, nominate)

    async def _finish(self, batch: Batch) -> int:
        """Page-out, second half: write slots and records, sync, evict; the number evicted."""
        rows = batch.rows
        try:
            await self.commit.persist(batch)
        except StoreError as exc:
            # Nothing names these slots: give them back. The gfns stay paging_out (there is
            # no un-nominate): adopt them later.
            self.store.release(batch.slots)
            now = trio.current_time()
            for g in batch.gfns:
                self.state.adopt[g] = now + 1.0
            self.commit.store_failed(exc)
            return 0
        self.faults.hit(CrashPoint.after_index_commit)
        results = await self.hv.evict(batch.gfns)
        self.faults.hit(CrashPoint.after_evict)
        adopt = self.state.adopt
        if adopt:
            for g in batch.gfns:
                adopt.pop(g, None)
        paged_out = self.policy.paged_out
        refused: list[Row] = []
        if not any(results):  # every gfn evicted (a result is 0 or an errno name)
            for g in batch.gfns:
                paged_out(g)
            evicted = len(rows)
        else:
            evicted = 0
            for row, res in zip(rows, results, strict=True):
                if res == 0:
                    evicted += 1
                    paged_out(row.gfn)
                else:
                    refused.append(row)
        if refused:
            # Still backed (populated, ballooned or held meanwhile): the row is not needed.
            self.stats.evict_busy += len(refused)
            await self.commit.free_rows((r.gfn, r.gen) for r in refused)
            state = await self.hv.audit_gfns(r.gfn for r in refused)
            now = trio.current_time()
            for r in refused:
                if state[r.gfn][0] == P2MType.paging_out:
                    self.state.adopt[r.gfn] = now + 1.0  # held by a mapper: try again later
        self.stats.paged_out += evicted
        log.debug(
            "pageout.batch",
            gfns=batch.gfns,
            evicted=evicted,
            refused=len(refused),
            adopted=not batch.nominated,
            rows=len(self.store.rows),
        )
        return evicted


__all__ = ["PageOut"]
