"""Copies that go away: DROP_PAGE requests (a ballooned gfn) and pages lost (mark_broken)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import structlog
import trio

from protocol import MAX_LIST, Errno, P2MType

from .commit import Committer
from .config import PagerStats
from .hvcalls import HvCalls
from .policy import Policy
from .state import PagerState

log = structlog.get_logger("pager")

#: Individual `page.lost` lines logged per call before only a count is given.
LOST_LOG_LIMIT: Final = 1000


def rsp(req: dict[str, Any]) -> dict[str, Any]:
    """The `resume` response answering request `req`."""
    return {k: req[k] for k in ("seq", "gfn", "vcpu_id", "flags")}


class Drops:
    """Serves DROP_PAGE requests and marks gfns with no good copy broken."""

    def __init__(
        self,
        hv: HvCalls,
        state: PagerState,
        commit: Committer,
        policy: Policy,
        stats: PagerStats,
        *,
        delay: float = 0.0,
    ) -> None:
        self.hv = hv
        self.delay = delay  # PagerConfig.drop_delay
        self.state = state
        self.commit = commit
        self.policy = policy
        self.stats = stats

    async def mark_lost(self, gfns: Sequence[int], *, reason: str) -> list[int]:
        """mark_broken gfns with no good copy, loudly; the gfns actually marked."""
        results = await self.hv.batched("mark_broken", gfns)
        marked = [g for g, r in zip(gfns, results, strict=True) if r == 0]
        for i, g in enumerate(marked):
            if i < LOST_LOG_LIMIT:
                log.error("page.lost", gfn=g, reason=reason)
            self.policy.dropped(g)
        if len(marked) > LOST_LOG_LIMIT:
            log.error("page.lost", count=len(marked), reason=reason, logged=LOST_LOG_LIMIT)
        self.stats.lost += len(marked)
        rows = self.commit.store.rows
        await self.commit.free_rows((g, r.gen) for g in marked if (r := rows.get(g)))
        return marked

    async def worker(self) -> None:
        """Serve the DROP_PAGE requests `PagerState.submit` queued, many at a time."""
        recv = self.state.drops_recv
        async for req in recv:
            if self.delay:  # a simulation knob (PagerConfig.drop_delay)
                await trio.sleep(self.delay)
            reqs = [req]
            while len(reqs) < MAX_LIST:
                try:
                    reqs.append(recv.receive_nowait())
                except trio.WouldBlock:
                    break
            await self.serve(reqs)

    async def serve(self, reqs: list[dict[str, Any]]) -> None:
        """DROP_PAGE: free the copy if the gfn is still `invalid` (the request may be stale)."""
        state = await self.hv.audit_gfns(r["gfn"] for r in reqs)
        rows = self.commit.store.rows
        keys = []
        for r in reqs:
            if state[r["gfn"]][0] == P2MType.invalid:
                row = rows.get(r["gfn"])
                if row is not None:
                    keys.append((row.gfn, row.gen))
                self.policy.dropped(r["gfn"])
        await self.commit.free_rows(keys)
        results = await self.hv.resume([rsp(r) for r in reqs])
        for r, res in zip(reqs, results, strict=True):
            self.state.seqs.discard(r["seq"])
            if res not in (0, Errno.ENOENT):
                log.error("resume.failed", seq=r["seq"], gfn=r["gfn"], err=res)
        self.stats.drops += len(reqs)
        self.state.notify()
        log.debug("page.dropped", gfns=[r["gfn"] for r in reqs], freed=len(keys))


__all__ = ["LOST_LOG_LIMIT", "Drops", "rsp"]
