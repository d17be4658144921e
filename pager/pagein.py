"""Demand page-in: the guest's requests served by read, verify, prep, resume, free.

A crash leaves the copy for the redelivered request: a row is freed only after a `prep`
of its copy answered 0. The common case (every slot in the page cache, hv not short of
frames, the connection's writer idle) starts at once in the connection's reader
(`PageIn.now`); anything else goes to the page-in workers (`PageIn.worker`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, cast

import structlog
import trio

from protocol import MAX_LIST, MAX_PAGES_PER_FRAME, Errno

from .commit import Committer
from .config import PagerConfig, PagerStats
from .drops import Drops, rsp
from .faults import CrashPoint, Faults
from .hvcalls import HvCalls, Result
from .policy import Policy
from .rowindex import Row
from .state import Job, PagerState
from .store import ChecksumError, StoreError

log = structlog.get_logger("pager")

#: Longest pause before retrying a prep refused with ENOMEM (the host has no free frame).
PREP_BACKOFF_MAX: Final = 0.5

#: Prefetch candidates remembered at most (oldest dropped first).
PREFETCH_MAX: Final = 4096


class _Sent:
    """A `prep` + `resume` pair on its way: its ids, its responses, and how many requests
    each job had when they were built (any more came late: see `PageIn._finish`)."""

    __slots__ = ("counts", "ids", "rsps")

    def __init__(self, counts: list[int], rsps: list[dict[str, Any]]) -> None:
        self.counts = counts
        self.rsps = rsps
        self.ids: list[int] = []


class PageIn:
    """Serves page-in jobs (see the module docstring)."""

    def __init__(
        self,
        *,
        hv: HvCalls,
        state: PagerState,
        commit: Committer,
        drops: Drops,
        policy: Policy,
        stats: PagerStats,
        config: PagerConfig,
        faults: Faults,
        nr_gfns: int,
    ) -> None:
        self.hv = hv
        self.client = hv.client
        self.state = state
        self.commit = commit
        self.drops = drops
        self.policy = policy
        self.stats = stats
        self.config = config
        self.faults = faults
        self.nr_gfns = nr_gfns
        self.batch = config.batch
        # Page-in batches running at once, by the workers or started by `now`.
        self.slots = trio.Semaphore(config.concurrency)

    async def worker(self) -> None:
        """Take queued jobs, up to a batch at a time, and serve them."""
        recv = self.state.jobs_recv
        async for job in recv:
            jobs = [job]
            while len(jobs) < self.batch:
                try:
                    jobs.append(recv.receive_nowait())
                except trio.WouldBlock:
                    break
            async with self.slots:
                await self.serve(jobs)

    def now(self, jobs: list[Job]) -> bool:
        """Start the common page-in at once, in the connection's reader, if nothing in it
        can block: every slot in the page cache and good, `prep` not starved, the
        connection's writer idle. Then only the wait for the replies goes to a task: the
        task switch to a page-in worker leaves the populate path. The steps
        and their order are `serve`'s; False (nothing done) sends jobs the usual way."""
        store_rows = self.commit.store.rows
        rows = [row for job in jobs if (row := store_rows.get(job.gfn)) is not None]
        if (
            self.state.prep_starved
            or len(rows) < len(jobs)  # no copy: prep answers tell what happened
            or len(jobs) > min(self.batch, MAX_PAGES_PER_FRAME)
            or sum(len(job.reqs) for job in jobs) > MAX_LIST
            or any(job.evict_fail for job in jobs)
            or not self.client.can_send_now()
        ):
            return False
        try:
            self.slots.acquire_nowait()  # before the read: none wasted under load
        except trio.WouldBlock:
            return False  # as many page-ins running as there are workers
        try:
            pages = self.commit.read_cached(rows)
            if pages is None or not all(type(p) is bytes and p for p in pages):
                self.slots.release()
                return False  # on the disk, or a failed read: the worker's way handles it
            self.stats.cached_reads += len(rows)
            self.faults.hit(CrashPoint.after_read)
            # Every entry is bytes (checked above): the prep's pages.
            sent, requests = self._requests(jobs, cast("list[bytes | None]", pages), [])
            sent.ids = self.client.send_requests_now(requests)
        except BaseException:
            self.slots.release()  # nothing sent: nothing to wait for
            raise
        self.stats.inline_pageins += 1

        async def finish() -> None:
            try:
                await self._finish(sent, jobs, rows, [])
            finally:
                self.slots.release()

        self.state.start_soon(finish)
        return True

    def _retry_later(self, job: Job, delay: float) -> None:
        async def requeue() -> None:
            await trio.sleep(delay)
            self.state.jobs_send.send_nowait(job)

        self.state.start_soon(requeue)

    async def serve(self, jobs: list[Job]) -> None:
        """Serve a batch of page-in jobs: read, verify, prep, resume, free the rows."""
        rows_now = self.commit.store.rows
        prep_gfns: list[int] = []
        prep_pages: list[bytes | None] = []
        prep_jobs: list[Job] = []
        prep_rows: list[Row | None] = []
        done: list[Job] = []
        lost: list[Job] = []
        reading: list[tuple[Job, Row]] = []
        for job in jobs:
            row = rows_now.get(job.gfn)
            if job.evict_fail:
                done.append(job)  # frame kept: only a resume
            elif row is None:
                # No copy: either the gfn kept or regained its frame (prep answers 0 or
                # ENOENT) or its copy is lost (prep of a frameless gfn without data: EINVAL).
                prep_jobs.append(job)
                prep_rows.append(None)
                prep_gfns.append(job.gfn)
                prep_pages.append(None)
            else:
                reading.append((job, row))
        if reading:
            rows = [r for _, r in reading]
            results = await self.commit.read(rows)
            self.faults.hit(CrashPoint.after_read)
            for (job, row), res in zip(reading, results, strict=True):
                if isinstance(res, ChecksumError):
                    # Maybe a flipped bit on the way in: read once more before giving up.
                    self.stats.checksum_errors += 1
                    log.error("store.checksum_mismatch", gfn=job.gfn, gen=row.gen, slot=row.slot)
                    res = (await self.commit.read([row]))[0]
                if isinstance(res, StoreError) and self.commit.store.rows.get(job.gfn) != row:
                    # The row went away meanwhile (DROP_PAGE): nothing to load.
                    res = b""
                if isinstance(res, ChecksumError):
                    lost.append(job)
                elif isinstance(res, StoreError):
                    self.stats.read_errors += 1
                    job.read_failures += 1
                    log.warning("store.read_failed", gfn=job.gfn, error=str(res))
                    if job.read_failures >= self.config.read_attempts:
                        lost.append(job)
                    else:
                        self._retry_later(job, min(0.05 * 2**job.read_failures, 1.0))
                else:
                    prep_jobs.append(job)
                    prep_rows.append(row if res else None)
                    prep_gfns.append(job.gfn)
                    prep_pages.append(res or None)
        freed: list[tuple[int, int]] = []
        if (
            prep_gfns
            and not lost
            and not self.state.prep_starved
            and len(prep_gfns) <= MAX_PAGES_PER_FRAME
            and all(d is not None for d in prep_pages)
            and sum(len(j.reqs) for j in prep_jobs + done) <= MAX_LIST
        ):
            await self._prep_and_resume(prep_jobs, prep_rows, prep_pages, done)
            return
        if prep_gfns:
            answers = await self.hv.prep(prep_gfns, prep_pages)
            self.faults.hit(CrashPoint.after_prep)
            for job, row, data, answer in zip(
                prep_jobs, prep_rows, prep_pages, answers, strict=True
            ):
                if answer == 0:
                    self._loaded(job, row, done, freed)
                elif answer == Errno.ENOMEM:
                    job.attempts += 1
                    self._note_enomem(job)
                    self._retry_later(job, min(0.005 * 2**job.attempts, PREP_BACKOFF_MAX))
                elif answer == Errno.EINVAL and data is None:
                    lost.append(job)  # frameless, and we hold no copy
                else:
                    # ENOENT: already done (resident again, ballooned, broken): just answer.
                    if answer != Errno.ENOENT:
                        log.error("prep.failed", gfn=job.gfn, err=answer)
                    done.append(job)
        if lost:
            marked = set(await self.drops.mark_lost([j.gfn for j in lost], reason="no good copy"))
            for job in lost:
                if job.gfn not in marked:
                    log.warning("page.lost_not_marked", gfn=job.gfn)
            done += lost
        if not done:
            return
        self.faults.hit(CrashPoint.before_resume)
        rsps = self._close_jobs(done)
        resumed = await self.hv.resume(rsps)
        self.faults.hit(CrashPoint.after_resume)
        self._resumed(rsps, resumed)
        self._paged_in(done, freed)

    async def _prep_and_resume(
        self,
        prep_jobs: list[Job],
        prep_rows: list[Row | None],
        pages: list[bytes | None],
        done: list[Job],
    ) -> None:
        """`prep` and `resume` back to back, without waiting for the `prep` reply between.

        hv serves one connection's requests in order, so the `resume` finds each gfn
        already loaded (`paging_in`) and the vCPU's retried access succeeds: one round
        trip less on every populate. Rows are still freed only for a `prep` that answered
        0. A gfn whose `prep` failed was resumed anyway: its vCPU retries, faults again and
        sends a new request (for ENOMEM, served the careful way: see `prep_starved`)."""
        sent, requests = self._requests(prep_jobs, pages, done)
        sent.ids = await self.client.send_requests(requests)  # one write, one wake-up of hv
        await self._finish(sent, prep_jobs, prep_rows, done)

    def _requests(
        self, prep_jobs: list[Job], pages: Sequence[bytes | None], done: list[Job]
    ) -> tuple[_Sent, list[tuple[str, dict[str, Any]]]]:
        """The `prep` and `resume` requests for these jobs, and what the finish needs."""
        jobs = prep_jobs + done
        sent = _Sent([len(job.reqs) for job in jobs], [rsp(r) for job in jobs for r in job.reqs])
        self.faults.hit(CrashPoint.before_resume)
        requests: list[tuple[str, dict[str, Any]]] = [
            ("prep", {"gfns": [j.gfn for j in prep_jobs], "pages": list(pages)}),
            ("resume", {"rsps": sent.rsps}),
        ]
        return sent, requests

    async def _finish(
        self, sent: _Sent, prep_jobs: list[Job], prep_rows: Sequence[Row | None], done: list[Job]
    ) -> None:
        """The rest of `_prep_and_resume` once both requests are sent: their replies."""
        client = self.client
        jobs = prep_jobs + done
        (prep_id, resume_id), rsps = sent.ids, sent.rsps
        try:
            results = (await client.call_reply(prep_id))["results"]
            self.faults.hit(CrashPoint.after_prep)
            resumed = (await client.call_reply(resume_id))["results"]
        finally:
            client.forget(prep_id)
            client.forget(resume_id)
        self._resumed(rsps, resumed)
        # The jobs stayed open until now, so duplicate requests that came meanwhile joined
        # them (one read per gfn); they are answered now, the gfn being loaded or lost.
        late = [r for job, n in zip(jobs, sent.counts, strict=True) for r in job.reqs[n:]]
        self._close_jobs(jobs)
        if late:
            late_rsps = [rsp(r) for r in late]
            self._resumed(late_rsps, await self.hv.resume(late_rsps))
        self.faults.hit(CrashPoint.after_resume)
        freed: list[tuple[int, int]] = []
        for job, row, res in zip(prep_jobs, prep_rows, results, strict=True):
            if res == 0:
                self._loaded(job, row, done, freed)
            elif res == Errno.ENOMEM:
                self._note_enomem(job)  # its vCPU faults again: a new request, a new job
            else:
                if res != Errno.ENOENT:  # already done (resident again, ballooned, broken)
                    log.error("prep.failed", gfn=job.gfn, err=res)
                done.append(job)
        self._paged_in(done, freed)

    def _loaded(
        self, job: Job, row: Row | None, done: list[Job], freed: list[tuple[int, int]]
    ) -> None:
        """`prep` answered 0 for job: its requests can be answered, its copy freed."""
        self.state.prep_starved = False
        done.append(job)
        if row is not None:
            freed.append((job.gfn, row.gen))  # that copy is in a frame now

    def _note_enomem(self, job: Job) -> None:
        # hv has no free frame. Until a prep succeeds again, page-ins wait for the prep's
        # answer before resuming and retry with a backoff, instead of letting the vCPU fault
        # straight back (a busy loop between hv and the pager while memory is short).
        self.state.prep_starved = True
        self.stats.prep_enomem += 1
        if job.attempts <= 1 or job.attempts % 20 == 0:
            log.warning("prep.enomem", gfn=job.gfn, attempts=job.attempts)

    def _close_jobs(self, jobs: list[Job]) -> list[dict[str, Any]]:
        """The responses answering `jobs`' requests. Each job is closed first: a request
        arriving from now on is a new fault."""
        open_jobs = self.state.jobs
        rsps = []
        for job in jobs:
            if open_jobs.get(job.gfn) is job:
                del open_jobs[job.gfn]
            rsps += [rsp(r) for r in job.reqs]
        return rsps

    def _resumed(self, rsps: list[dict[str, Any]], results: list[Result]) -> None:
        seqs = self.state.seqs
        for r, res in zip(rsps, results, strict=True):
            seqs.discard(r["seq"])
            if res not in (0, Errno.ENOENT):  # ENOENT: consumed before (redelivery)
                log.error("resume.failed", seq=r["seq"], gfn=r["gfn"], err=res)

    def _paged_in(self, done: list[Job], freed: list[tuple[int, int]]) -> None:
        # Rows go in the background (one group commit for many page-ins): the worker is
        # free for the next batch at once. Each was loaded by a prep that answered 0.
        self.commit.queue_free(freed)
        for job in done:
            self.policy.paged_in(job.gfn)
            log.debug("page.paged_in", gfn=job.gfn, requests=len(job.reqs))
        self.stats.paged_in += len(freed)
        if self.config.prefetch:
            self._note_prefetch(j.gfn for j in done)
        self.state.pageins += len(freed)
        self.state.wake(audit=False)
        self.state.notify()

    def _note_prefetch(self, gfns: Iterable[int]) -> None:
        rows = self.commit.store.rows
        prefetch, jobs = self.state.prefetch, self.state.jobs
        for g in gfns:
            for n in range(g + 1, min(g + 1 + self.config.prefetch, self.nr_gfns)):
                if n in rows and n not in jobs:
                    prefetch[n] = None
        while len(prefetch) > PREFETCH_MAX:
            del prefetch[next(iter(prefetch))]


__all__ = ["PREFETCH_MAX", "PREP_BACKOFF_MAX", "PageIn"]
