"""The pager's exit: page everything back in, leave no row behind, detach (xenpaging's)."""

from __future__ import annotations

import structlog
import trio

from protocol import P2MType

from .commit import Committer
from .config import PagerConfig, PagerStats
from .hvcalls import HvCalls
from .pageout import PageOut
from .proactive import Proactive
from .state import PagerState

log = structlog.get_logger("pager")


class Drain:
    """Runs the exit of `on_exit="pagein"`; `error` says why it failed, if it did."""

    def __init__(
        self,
        *,
        hv: HvCalls,
        state: PagerState,
        commit: Committer,
        pageout: PageOut,
        proactive: Proactive,
        stats: PagerStats,
        config: PagerConfig,
    ) -> None:
        self.hv = hv
        self.state = state
        self.commit = commit
        self.pageout = pageout
        self.proactive = proactive
        self.stats = stats
        self.config = config
        self.done = trio.Event()
        self.error: str | None = None

    async def run(self) -> None:
        """Page everything back in, then detach; `done` is set either way."""
        timeout = self.config.drain_timeout
        deadline = trio.current_time() + timeout
        try:
            with trio.fail_after(timeout):
                while True:
                    config = self.config
                    if await self.proactive.pipelined(
                        config.pipeline * config.batch, pipeline=config.pipeline, batch=config.batch
                    ):
                        continue
                    if self.state.adopt and not self.commit.full():
                        # Leftover nominations: no un-nominate exists, so copy, evict, and
                        # bring them back in on the next pass (paging in freed slots first).
                        adopt = list(self.state.adopt)[: self.config.batch]
                        await self.pageout.pageout(adopt, nominate=False)
                        continue
                    counters = await self.hv.audit(0, 0)
                    if counters["paged_pages"] == 0 and not self.state.jobs:
                        # Nothing is out: rows left name resident gfns; leave none behind.
                        await self.scrub()
                        reply = await self.hv.client.request("detach")
                        if reply["ok"]:
                            break
                        log.info("pager.detach_busy", err=reply["err"], msg=reply["msg"])
                    await self.scrub()
                    await self.state.wait_wake(0.05)
        except trio.TooSlowError:
            left = await self.hv.audit(0, 0)
            self.error = (
                f"could not page everything in within {timeout:g} s "
                f"({left['paged_pages']} paged); the store stays durable"
            )
            log.error("pager.drain_failed", msg=self.error, deadline=deadline)
        else:
            self.stats.detached = True
            log.info("pager.detached", rows=len(self.commit.store.rows))
        self.done.set()

    async def scrub(self) -> None:
        """Free rows of gfns that are not frameless in the paging path (no batch in flight)."""
        rows = self.commit.store.rows
        if not rows:
            return
        state = await self.hv.audit_gfns(rows)
        await self.commit.free_rows(
            (g, r.gen)
            for g, r in list(rows.items())
            if not self.state.busy(g)
            and (state[g][1] or state[g][0] not in (P2MType.paged, P2MType.paging_in_start))
        )


__all__ = ["Drain"]
