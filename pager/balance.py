"""Target balancing: page out above hv's target, page in below it, adopt leftovers."""

from __future__ import annotations

from typing import Any

import trio

from .commit import Committer
from .config import PagerConfig
from .hvcalls import HvCalls
from .pageout import PageOut
from .proactive import Proactive
from .state import PagerState


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

    def target(self, counters: dict[str, Any]) -> int:
        """The tot_pages to keep at most: the configured override, else hv's."""
        if self.config.target is not None:
            return self.config.target
        return counters["target"]  # a checked reply field

    async def once(self) -> bool:
        """One step toward tot_pages <= target; False when there is nothing to do."""
        if not self.config.balance:
            return False
        now = trio.current_time()
        # A full pages file with no free slot takes no batch: an adoption tried then would
        # do nothing, and a step that does nothing must not count as one (a busy loop).
        no_room = self.commit.full() and self.commit.store.free_slots == 0
        adopt = [g for g, t in self.state.adopt.items() if t <= now][: self.config.batch]
        if adopt and not no_room:
            await self.pageout.pageout(adopt, nominate=False)
            return True
        counters = await self.hv.audit(0, 0)
        tot, target = counters["tot_pages"], self.target(counters)
        if tot > target:
            if no_room:
                return False
            return await self.pageout.pipelined(tot - target)
        if tot < target and counters["paged_pages"] > 0:
            n = min(self.config.batch, target - tot)
            return await self.proactive.some(n) > 0
        return False

    async def run(self) -> None:
        """Balance until the pager stops; re-check at least every `recheck_interval`."""
        while not self.state.stopping:
            if await self.once():
                await trio.lowlevel.checkpoint()
                continue
            self.state.notify()  # idle: what waits for a step sees the pager has settled
            await self.state.wait_wake(self.config.recheck_interval)


__all__ = ["Balancer"]
