"""Proactive page-in: paged gfns brought back with no request (target rose, prefetch, exit).

It never marks anything broken on its own (a re-read may succeed; a guest touch makes a
corrupt copy a request, served by demand page-in). The gfns it works on are held in the
`PagerState` (`claim_in`) so that no page-out takes them meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
import trio

from protocol import Errno, P2MType

from .commit import Committer
from .config import PagerStats
from .hvcalls import HvCalls
from .policy import Policy
from .rowindex import Row
from .state import PagerState
from .store import ChecksumError

log = structlog.get_logger("pager")


class Proactive:
    """Pages in gfns nobody asked for, prefetch candidates first."""

    def __init__(
        self,
        *,
        hv: HvCalls,
        state: PagerState,
        commit: Committer,
        policy: Policy,
        stats: PagerStats,
    ) -> None:
        self.hv = hv
        self.state = state
        self.commit = commit
        self.policy = policy
        self.stats = stats
        self._hand = 0  # proactive page-in looks for rows from this gfn on

    async def pipelined(self, deficit: int, *, pipeline: int, batch: int) -> int:
        """Proactively page in up to `deficit` gfns in batches of `batch`, up to `pipeline`
        batches on their way at once, each in its own task (read, prep, queue the free):
        one batch's read overlaps another's prep, as page-out's batches overlap. Each
        batch's gfns are held (`claim_in`) from its pick on, so no other batch, page-out
        or pick takes them. The number in."""
        slots = trio.Semaphore(pipeline)
        done = 0

        async def one(picked: list[int]) -> None:
            nonlocal done
            try:
                n = await self.pagein(picked)  # not `done += await`: it reads `done` first
                done += n
            finally:
                self.state.release_in(picked)
                slots.release()

        async with trio.open_nursery() as nursery:
            while deficit > 0:  # (also while stopping: the drain pages in with it)
                await slots.acquire()
                picked = self._pick(min(batch, deficit))
                if not picked:
                    slots.release()
                    break
                deficit -= len(picked)
                nursery.start_soon(one, picked)
        return done

    def _pick(self, n: int) -> list[int]:
        """Up to `n` paged gfns no job holds, prefetch candidates first, now held by this
        proactive page-in (release them with `state.release_in`)."""
        state, rows = self.state, self.commit.store.rows
        picked: list[int] = []
        while state.prefetch and len(picked) < n:
            g = next(iter(state.prefetch))
            del state.prefetch[g]
            if g in rows and not state.busy(g):
                picked.append(g)
        if len(picked) < n:
            # From where the last pass stopped: the rows before it are in flight or freed,
            # and walking past them again on every pass was most of a page-in's CPU.
            pending, first = self.commit.pending_free, set(picked)
            for g, row in rows.items_from(self._hand):
                if len(picked) >= n:
                    self._hand = g
                    break
                if not state.busy(g) and g not in first and (g, row.gen) not in pending:
                    picked.append(g)
        return state.claim_in(picked)

    async def pagein(self, gfns: Sequence[int]) -> int:
        """prep `paged` gfns with no request; the number in."""
        rows = [r for g in gfns if (r := self.commit.store.rows.get(g)) is not None]
        if not rows:
            return 0
        results = await self.commit.read(rows)
        good: list[Row] = []
        pages: list[bytes | None] = []
        bad: list[Row] = []
        for row, res in zip(rows, results, strict=True):
            if isinstance(res, bytes):
                good.append(row)
                pages.append(res)
            elif isinstance(res, ChecksumError):
                bad.append(row)
            else:
                self.stats.read_errors += 1
                log.warning("store.read_failed", gfn=row.gfn, error=str(res))
        if bad:
            # A corrupt copy stays paged until a guest touch makes it a request; proactive
            # page-in never marks anything broken on its own (a re-read may succeed).
            self.stats.checksum_errors += len(bad)
            for row in bad:
                log.error("store.checksum_mismatch", gfn=row.gfn, gen=row.gen, slot=row.slot)
        if not good:
            return 0
        prepped = await self.hv.prep([r.gfn for r in good], pages)
        freed: list[tuple[int, int]] = []
        other: list[Row] = []
        for row, answer in zip(good, prepped, strict=True):
            if answer == 0:
                freed.append((row.gfn, row.gen))
                self.policy.paged_in(row.gfn, mru=False)
            elif answer == Errno.ENOMEM:
                self.stats.prep_enomem += 1
            else:
                other.append(row)
        self.commit.queue_free(freed)
        if other:
            # ENOENT: not paged. Rows of gfns with a frame (or gone) are stale: no page-out
            # batch is in flight (this task runs them), so they may go now.
            state = await self.hv.audit_gfns(r.gfn for r in other)
            await self.commit.free_rows(
                (r.gfn, r.gen)
                for r in other
                if state[r.gfn][1] or state[r.gfn][0] in (P2MType.invalid, P2MType.broken)
            )
        self.stats.proactive_in += len(freed)
        self.stats.paged_in += len(freed)
        log.info("pagein.proactive", paged_in=len(freed), rows=len(self.commit.store.rows))
        self.state.notify()
        return len(freed)


__all__ = ["Proactive"]
