"""What the pager's jobs share: open page-in jobs, in-flight gfns, and the rules over them.

One `PagerState` per run. It owns the open page-in jobs (one per gfn, every unanswered
request for that gfn joined to it), the seqs received and not yet answered, the queues to
the page-in and drop workers, the gfns in flight, and the progress/wake signals. Its rule:
page-out and proactive page-in never work on the same gfn at once (`claim_out`,
`claim_in`); a gfn served by a demand page-in, or waiting for adoption, is busy for both.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from protocol import FLAG_DROP_PAGE, FLAG_EVICT_FAIL

from .config import PagerStats


class Job:
    """Every unanswered request for one gfn: served by one read, one prep, one resume."""

    __slots__ = ("attempts", "gfn", "read_failures", "reqs")

    def __init__(self, gfn: int) -> None:
        self.gfn = gfn
        self.reqs: list[dict[str, Any]] = []
        self.attempts = 0  # ENOMEM retries
        self.read_failures = 0

    @property
    def evict_fail(self) -> bool:
        """The gfn was populated while paging_out: it kept its frame, a resume is enough."""
        return any(r["flags"] & FLAG_EVICT_FAIL for r in self.reqs)


class GfnClash(RuntimeError):
    """Page-out was asked to take gfns a proactive page-in holds (a bug in the caller)."""


class PagerState:
    """The shared state of one pager run (see the module docstring)."""

    def __init__(self, stats: PagerStats) -> None:
        self.stats = stats
        self.jobs: dict[int, Job] = {}  # gfn -> open page-in job (not yet resumed)
        self.seqs: set[int] = set()  # seqs received and not yet resumed
        self.prep_starved = False  # the last prep met ENOMEM (see PageIn.note_enomem)
        self.jobs_send, self.jobs_recv = trio.open_memory_channel[Job](math.inf)
        self.drops_send, self.drops_recv = trio.open_memory_channel[dict[str, Any]](math.inf)
        self.adopt: dict[int, float] = {}  # leftover paging_out gfn -> not before (time)
        self.out_inflight: set[int] = set()  # gfns between nominate and evict
        self.in_inflight: set[int] = set()  # gfns in a proactive page-in
        self.prefetch: dict[int, None] = {}  # candidates for proactive page-in, oldest first
        self.stopping = False
        self.pageins = 0  # gfns paged in by a prep that answered 0, since the start
        self.audit_due = True  # the balancer's next step asks hv for its counters first
        self._wake_event = trio.Event()
        self._progress = trio.Event()
        self._nursery: trio.Nursery | None = None

    # -- requests ---------------------------------------------------------------------

    def submit(self, req: dict[str, Any]) -> Job | None:
        """Take a request; the new job it opened, for the caller to start or queue. A
        DROP_PAGE request goes to the drop worker; a seq seen before is ignored."""
        seq = req["seq"]
        if seq in self.seqs:
            return None  # delivered twice: already being served
        self.seqs.add(seq)
        self.stats.requests += 1
        if req["flags"] & FLAG_DROP_PAGE:
            self.drops_send.send_nowait(req)
            return None
        job = self.jobs.get(req["gfn"])
        if job is not None:
            job.reqs.append(req)  # joins the open job: one read, one prep, one resume
            return None
        job = self.jobs[req["gfn"]] = Job(req["gfn"])
        job.reqs.append(req)
        return job

    # -- the rule: page-out and proactive page-in never share a gfn ---------------------

    def busy(self, gfn: int) -> bool:
        """Served by a page-in, waiting for adoption, or in a page-out batch or a
        proactive page-in: neither page-out nor proactive page-in may take it."""
        return (
            gfn in self.jobs
            or gfn in self.adopt
            or gfn in self.out_inflight
            or gfn in self.in_inflight
        )

    def claim_out(self, gfns: Iterable[int]) -> None:
        """Mark `gfns` as in a page-out batch (nominated here, or adopted leftovers).
        GfnClash if a proactive page-in holds any of them."""
        gfns = list(gfns)
        clash = self.in_inflight.intersection(gfns)
        if clash:
            raise GfnClash(f"page-out of gfns in a proactive page-in: {sorted(clash)[:8]}")
        self.out_inflight.update(gfns)

    def release_out(self, gfns: Iterable[int]) -> None:
        """The page-out of `gfns` is over."""
        self.out_inflight.difference_update(gfns)

    def claim_in(self, gfns: Iterable[int]) -> list[int]:
        """Of `gfns`, those no other job holds, now held by a proactive page-in."""
        picked = [g for g in dict.fromkeys(gfns) if not self.busy(g)]
        self.in_inflight.update(picked)
        return picked

    def release_in(self, gfns: Iterable[int]) -> None:
        """The proactive page-in of `gfns` is over."""
        self.in_inflight.difference_update(gfns)

    # -- signals and background tasks ---------------------------------------------------

    def wake(self, *, audit: bool = True) -> None:
        """Have the balancer look again now (target moved, a page-in used a frame). With
        `audit=False` (a page-in, counted in `pageins`) the balancer may judge from its
        last counters instead of asking hv (`Balancer.once`)."""
        if audit:
            self.audit_due = True
        self._wake_event.set()

    async def wait_wake(self, at_most: float) -> None:
        """Wait for `wake()`, at most `at_most` s (then the next step audits)."""
        with trio.move_on_after(at_most) as scope:
            await self._wake_event.wait()
        if scope.cancelled_caught:
            self.audit_due = True
        self._wake_event = trio.Event()

    def notify(self) -> None:
        """The pager took a step: wake whatever waits in `wait_progress`."""
        self._progress.set()
        self._progress = trio.Event()

    async def wait_progress(self) -> None:
        """Return after the pager's next step (a batch, a page-in, a request received)."""
        await self._progress.wait()

    def attach(self, nursery: trio.Nursery) -> None:
        """The run's nursery, where `start_soon` starts background tasks."""
        self._nursery = nursery

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start a background task of this run."""
        assert self._nursery is not None, "the pager is not running"
        self._nursery.start_soon(fn, *args)


__all__ = ["GfnClash", "Job", "PagerState"]
