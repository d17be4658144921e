"""Target balancing: page out above hv's target, page in below it, adopt leftovers.

With a reserve (`PagerConfig.reserve`; the command line's `--reserve` defaults to two
batches), the pager keeps that many frames free below the target, as Linux's reclaim
keeps free pages between watermarks: a guest fault then takes a free frame at once, and
the page-outs that make room again go in whole batches, once half of the reserve is used,
instead of one gfn after every fault (a page-out at batch 1 costs ~20x more per page than
at batch 64). tot_pages exceeds the
target only if more faults arrive during one refill than half the reserve; with a reserve
of 0 the pager pages out only what exceeds the target, after the fact (`plan_step`).
Between two audits of hv's counters the balancer counts its own page-ins, and audits again
only when they may call for a step, when the target may have moved, after a step, and at
least every `recheck_interval` (a balloon changes tot_pages silently).
"""

from __future__ import annotations

from typing import Any, Final

import trio

from .commit import Committer
from .config import PagerConfig
from .hvcalls import HvCalls
from .pageout import PageOut
from .proactive import Proactive
from .state import PagerState


def plan_step(tot: int, paged: int, target: int, reserve: int) -> int:
    """The balancer's next step: gfns to page out (> 0), to page in (< 0), or 0.

    Over the target, page out down to `target - reserve`. Under it, while some paged gfn
    could still fault in and push tot_pages over the target (`tot + paged > target`),
    keep `reserve` frames free: page out down to `target - reserve` once half of them
    or more are used (the low watermark), and page in only up to `target - reserve`. When
    every paged gfn fits under the target, page them all in: no fault can overshoot.
    Faults and page-outs leave `tot + paged` as it is, so a step never undoes another.
    """
    floor = max(0, target - reserve)
    fits = tot + paged <= target
    if tot > target or (not fits and target - tot <= reserve // 2):
        return tot - floor
    if paged and tot < target:
        return -(paged if fits else max(0, floor - tot))
    return 0


class Balancer:
    """Moves tot_pages toward the target, one step at a time (`once`), for ever (`run`)."""

    def __init__(
        self,
        *,
        hv: HvCalls,
        state: PagerState,
        commit: Committer,
        pageout: PageOut,
        proactive: Proactive,
        config: PagerConfig,
    ) -> None:
        self.hv = hv
        self.state = state
        self.commit = commit
        self.pageout = pageout
        self.proactive = proactive
        self.config = config
        #: hv's tot_pages, paged_pages and the target at the last audit, and
        #: `state.pageins` just before it.
        self._last: tuple[int, int, int, int] | None = None
        self._audited_at = 0.0  # trio time of the last audit

    def target(self, counters: dict[str, Any]) -> int:
        """The tot_pages to keep at most: the configured override, else hv's."""
        if self.config.target is not None:
            return self.config.target
        return counters["target"]  # a checked reply field

    async def once(self) -> bool:
        """One step toward tot_pages <= target, with the reserve (module doc); False when
        there is nothing to do."""
        if not self.config.balance:
            return False
        now = trio.current_time()
        # A full pages file with no free slot takes no batch: an adoption tried then would
        # do nothing, and a step that does nothing must not count as one (a busy loop).
        no_room = self.commit.full() and self.commit.store.free_slots == 0
        if no_room:
            self.commit.urge_frees()  # rows waiting to be freed hold slots a batch needs
        adopt = [g for g, t in self.state.adopt.items() if t <= now][: self.config.batch]
        if adopt and not no_room:
            await self.pageout.pageout(adopt, nominate=False)
            return True
        state, reserve = self.state, self.config.reserve
        if (
            not state.audit_due
            and self._last is not None
            and now - self._audited_at < self.config.recheck_interval
        ):
            # Only page-ins since the last audit: each used one frame (tot_pages + 1,
            # paged_pages - 1). With a reserve most of them ask for no step, and an audit
            # round trip per fault would cost hv and the pager more than the fault.
            tot, paged, target, seen = self._last
            used = state.pageins - seen
            if plan_step(tot + used, paged - used, target, reserve) == 0:
                return False
        state.audit_due, self._audited_at = False, now
        seen = state.pageins  # before the audit: page-ins meanwhile are counted twice at
        counters = await self.hv.audit(0, 0)  # most (an early audit), never missed
        tot, paged, target = counters["tot_pages"], counters["paged_pages"], self.target(counters)
        self._last = (tot, paged, target, seen)
        step = plan_step(tot, paged, target, reserve)
        if step > 0:
            if no_room:
                return False
            state.audit_due = True
            return await self.pageout.pipelined(step)
        if step < 0:
            state.audit_due = True
            # Pipelined as page-out is, up to `_IN_ROUNDS` full pipelines before the next
            # audit: demand page-ins meanwhile use frames too, and an overshoot would be
            # paged out again.
            config = self.config
            n = min(-step, _IN_ROUNDS * config.pipeline * config.batch)
            done = await self.proactive.pipelined(n, pipeline=config.pipeline, batch=config.batch)
            return done > 0
        return False

    async def run(self) -> None:
        """Balance until the pager stops; re-check at least every `recheck_interval`."""
        while not self.state.stopping:
            if await self.once():
                await trio.lowlevel.checkpoint()
                continue
            self.state.notify()  # idle: what waits for a step sees the pager has settled
            await self.state.wait_wake(self.config.recheck_interval)


#: Full pipelines of proactive page-in between two audits (see `Balancer.once`).
_IN_ROUNDS: Final = 4


__all__ = ["Balancer", "plan_step"]
