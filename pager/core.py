"""The pager's core: recovery, the page-out and page-in pipelines, target following, exit.

`run_pager(stream, state_dir, config)` runs one pager over any trio stream connected to
hv's privcmd socket. Crash safety rests on three orders:

- page-out: nominate -> map -> write slots -> fdatasync -> commit rows -> evict, so a gfn is
  never frameless before its copy is durable (a crash leaves either a resident gfn with a
  stale row, freed at reconcile, or a paged gfn with a durable, checksummed copy);
- page-in: read + verify -> prep -> resume -> free the row (only after prep answered 0),
  so a crash leaves the copy for the redelivered request;
- recovery: audit, free rows of gfns that have a frame (or are gone), report frameless
  gfns without a row as lost (mark_broken: the guest gets EIO, never wrong bytes), adopt
  leftover `paging_out` gfns, then serve the redelivered requests.
"""

from __future__ import annotations

import errno as _errno
import functools
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import structlog
import trio

from protocol import (
    FLAG_DROP_PAGE,
    FLAG_EVICT_FAIL,
    MAX_AUDIT_COUNT,
    MAX_LIST,
    MAX_PAGES_PER_FRAME,
    Errno,
    OpError,
    P2MType,
    bit,
    unpack_bits,
)
from transport import Client, ConnectionClosed, open_client

from .disk import Disk
from .faults import NO_FAULTS, Faults, SimulatedCrash
from .policy import make_policy
from .realdisk import RealDisk
from .store import ChecksumError, PageStore, Row, StoreError, checksum
from .store_faults import faulty_disk

log = structlog.get_logger("pager")

#: Longest pause between two hello attempts refused with EBUSY.
HELLO_BACKOFF_MAX: Final = 1.0

#: Longest pause before retrying a prep refused with ENOMEM (the host has no free frame).
PREP_BACKOFF_MAX: Final = 0.5

#: Seconds after an ENOSPC before the pages file may try to grow again.
FULL_RETRY: Final = 10.0

#: Individual `page.lost` lines logged per recovery before only a count is given.
LOST_LOG_LIMIT: Final = 1000

#: Prefetch candidates remembered at most (oldest dropped first).
PREFETCH_MAX: Final = 4096

#: Seconds the freer holds rows to delete before committing their deletion itself: a
#: page-out's disk phase that starts meanwhile deletes them in its own transaction, which
#: saves the freer's commit and its sync (a guest at its target pages one gfn out per
#: fault, so one is usually about to start). A delay here only delays a slot's reuse.
FREE_WAIT: Final = 0.002

_FRAMELESS_TYPES = b"[\x01\x02\x03]"  # paging_out, paged, paging_in_start: need a look


class PagerError(Exception):
    """The pager cannot go on (refused hello, locked store, failed exit): one clear line."""


class ConnectionLost(PagerError):
    """hv closed the connection or it broke: the process exits and is restarted."""


@dataclass
class PagerConfig:
    """Tunables of one pager (the command line's options)."""

    domid: int = 1
    policy: str = "xenpaging"
    on_exit: str = "pagein"  # or "keep": leave pages out, store durable
    batch: int = 64  # gfns per page-out batch and per page-in batch (<= 255 per map/prep)
    concurrency: int = 4  # page-in batches at once (workers, or started from the reader)
    pipeline: int = 8  # page-out batches on their way at once
    target: int | None = None  # override hv's target (tot_pages to keep at most)
    prefetch: int = 0  # paged neighbours paged in proactively after a guest fault
    mru_size: int | None = None  # xenpaging's MRU list length
    hello_timeout: float = 10.0  # how long EBUSY on hello is retried
    lock_timeout: float = 10.0  # how long to wait for the state directory's lock
    recheck_interval: float = 0.5  # balance at least this often (balloons are silent)
    drain_timeout: float = 60.0  # exit: time allowed to page everything in and detach
    read_attempts: int = 4  # slot reads failing with EIO before the page is declared lost
    balance: bool = True  # follow the target; False: only serve requests (tests, benchmarks)

    def __post_init__(self) -> None:
        if self.on_exit not in ("pagein", "keep"):
            raise ValueError(f"on_exit must be pagein or keep, not {self.on_exit!r}")
        if not 1 <= self.batch <= MAX_PAGES_PER_FRAME + 1:
            raise ValueError(f"batch must be in [1, {MAX_PAGES_PER_FRAME + 1}]")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.pipeline < 1:
            raise ValueError("pipeline must be >= 1")
        if self.prefetch < 0:
            raise ValueError("prefetch must be >= 0")
        if self.target is not None and self.target < 0:
            raise ValueError("target must be >= 0")
        make_policy(self.policy, 1, _no_accessed)  # validates the name


async def _no_accessed(start: int, count: int) -> bytes:
    return bytes((count + 7) // 8)


@dataclass
class PagerStats:
    """Counters of one pager run (also logged at exit)."""

    epoch: int = 0
    recovered_rows: int = 0
    stale_freed: int = 0
    adopted: int = 0
    lost: int = 0
    redelivered: int = 0
    recovery_s: float = 0.0
    paged_out: int = 0
    paged_in: int = 0
    proactive_in: int = 0
    requests: int = 0
    drops: int = 0
    nominate_busy: int = 0
    evict_busy: int = 0
    prep_enomem: int = 0
    read_errors: int = 0
    checksum_errors: int = 0
    store_full: int = 0
    store_errors: int = 0
    cached_reads: int = 0  # slots read from the page cache (no thread, no disk)
    disk_reads: int = 0  # slots read through a worker thread (not all in the cache)
    detached: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict."""
        return asdict(self)


class _Job:
    """Every unanswered request for one gfn: served by one read, one prep, one resume."""

    __slots__ = ("attempts", "gfn", "read_failures", "reqs")

    def __init__(self, gfn: int) -> None:
        self.gfn = gfn
        self.reqs: list[dict[str, Any]] = []
        self.attempts = 0  # ENOMEM retries
        self.read_failures = 0

    @property
    def evict_fail(self) -> bool:
        # The gfn was populated while paging_out: it kept its frame, a resume is enough.
        return any(r["flags"] & FLAG_EVICT_FAIL for r in self.reqs)


@dataclass(slots=True)
class _Batch:
    """A page-out batch between its map and its evict."""

    gfns: list[int]
    slots: list[int]
    pages: list[bytes]
    rows: list[Row]
    nominated: bool


class _Sent:
    """A `prep` + `resume` pair on its way: its ids, its responses, and how many requests
    each job had when they were built (any more came late: see `_prep_and_resume_finish`)."""

    __slots__ = ("counts", "ids", "rsps")

    def __init__(self, counts: list[int], rsps: list[dict[str, Any]]) -> None:
        self.counts = counts
        self.rsps = rsps
        self.ids: list[int] = []


class _GroupEntry:
    """A page-out batch waiting for (or in) a group commit."""

    __slots__ = ("batch", "done", "error")

    def __init__(self, batch: _Batch) -> None:
        self.batch = batch
        self.done = trio.Event()
        self.error: StoreError | None = None


def _rsp(req: dict[str, Any]) -> dict[str, Any]:
    return {k: req[k] for k in ("seq", "gfn", "vcpu_id", "flags")}


def _chunks(seq: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class Pager:
    """One attached pager: owns the store and the client for the length of a run."""

    def __init__(
        self,
        client: Client,
        store: PageStore,
        config: PagerConfig,
        faults: Faults,
        info: dict[str, Any],
    ) -> None:
        self.client = client
        self.store = store
        self.config = config
        self.faults = faults
        self.nr_gfns: int = info["nr_gfns"]
        self.stats = PagerStats(epoch=info.get("epoch") or 0)
        self.policy = make_policy(
            config.policy, self.nr_gfns, self._accessed, mru_size=config.mru_size
        )
        self.batch = config.batch  # map and prep go in chunks of MAX_PAGES_PER_FRAME
        self.hv_target: int | None = None
        self._jobs: dict[int, _Job] = {}  # gfn -> open page-in job (not yet resumed)
        self._seqs: set[int] = set()  # seqs received and not yet resumed
        self._prep_starved = False  # the last prep met ENOMEM (see _note_enomem)
        self._jobs_send, self._jobs_recv = trio.open_memory_channel[_Job](math.inf)
        # Page-in batches running at once, by the workers or started by `_pagein_now`.
        self._pagein_slots = trio.Semaphore(config.concurrency)
        self._drops_send, self._drops_recv = trio.open_memory_channel[dict[str, Any]](math.inf)
        self._free_send, self._free_recv = trio.open_memory_channel[tuple[int, int]](math.inf)
        self._pending_free: set[tuple[int, int]] = set()  # (gfn, gen) queued to the freer
        self._adopt: dict[int, float] = {}  # leftover paging_out gfn -> not before (time)
        self._out_inflight: set[int] = set()  # gfns between nominate and evict
        self._group: list[_GroupEntry] = []  # batches waiting for the next disk phase
        self._group_running = False
        self._free_later: list[tuple[int, int]] = []  # rows for the next phase to delete
        self._last_store_error: StoreError | None = None
        self._prefetch: dict[int, None] = {}
        self._pagein_hand = 0  # proactive page-in looks for rows from this gfn on
        self._wake_event = trio.Event()
        self._progress = trio.Event()
        self._full_since: float | None = None
        self._stopping = False
        self._drained = trio.Event()
        self._drain_error: str | None = None
        self._nursery: trio.Nursery | None = None

    # -- hv calls ---------------------------------------------------------------------

    async def _accessed(self, start: int, count: int) -> bytes:
        reply = await self.client.call("accessed", start=start, count=count, clear=True)
        return reply["bits"]

    async def _batched(self, op: str, gfns: Sequence[int], n: int = MAX_LIST) -> list[Any]:
        out: list[Any] = []
        for chunk in _chunks(gfns, n):
            out += (await self.client.call(op, gfns=list(chunk)))["results"]
        return out

    async def _audit(self, start: int, count: int) -> dict[str, Any]:
        return await self.client.call("audit", start=start, count=count)

    async def _audit_gfns(self, gfns: Iterable[int]) -> dict[int, tuple[int, bool]]:
        """gfn -> (p2m code, has frame), audited in as few ranges as is reasonable."""
        out: dict[int, tuple[int, bool]] = {}
        todo = sorted(set(gfns))
        i = 0
        while i < len(todo):
            start = todo[i]
            j = i
            while j + 1 < len(todo) and todo[j + 1] - start < 4096:
                j += 1
            reply = await self._audit(start, todo[j] - start + 1)
            for g in todo[i : j + 1]:
                out[g] = (reply["types"][g - start], bit(reply["frames"], g - start))
            i = j + 1
        return out

    def _wake(self) -> None:
        self._wake_event.set()

    def _notify(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def wait_progress(self) -> None:
        """Return after the pager's next step (a batch, a page-in, a request received)."""
        await self._progress.wait()

    # -- store helpers ----------------------------------------------------------------

    async def _free_rows(self, keys: Iterable[tuple[int, int]]) -> None:
        """Durably delete rows by (gfn, gen); a failure leaves them for the next reconcile."""
        todo = self.store.to_delete(keys)
        if not todo:
            return
        try:
            await self.store.delete_rows(todo)
        except StoreError as exc:
            self.stats.store_errors += 1
            log.warning("store.free_failed", rows=len(todo), error=str(exc))

    # -- recovery ---------------------------------------------------------------------

    async def recover(self) -> None:
        """Audit hv and reconcile the store with it (DESIGN.md "Recovery")."""
        t0 = time.monotonic()
        nr = self.nr_gfns
        types = bytearray()
        frames = bytearray()
        for start in range(0, nr, MAX_AUDIT_COUNT):
            count = min(MAX_AUDIT_COUNT, nr - start)
            reply = await self._audit(start, count)
            types += reply["types"]
            frames += reply["frames"][: (count + 7) // 8]
        self.faults.hit("after_audit")
        store = self.store
        rows = store.rows
        self.stats.recovered_rows = len(rows)
        # One byte per gfn and the type codes as plain ints: these loops run once per row
        # and once per frameless gfn (100,000s at a restart), so no call or enum lookup each.
        has_frame = unpack_bits(bytes(frames), nr)
        needed = (int(P2MType.paged), int(P2MType.paging_in_start))
        paging_out, paged = int(P2MType.paging_out), int(P2MType.paged)
        # A row is needed only by a frameless gfn in the paging path; a paging_out gfn is
        # re-copied (its row may predate its latest contents).
        stale: list[tuple[int, int]] = [
            (gfn, gen)
            for gfn, gen in rows.gens()
            if gfn >= nr or has_frame[gfn] or types[gfn] not in needed
        ]
        lost: list[int] = []
        adopt: list[int] = []
        for m in re.finditer(_FRAMELESS_TYPES, types):
            gfn = m.start()
            if types[gfn] == paging_out:
                adopt.append(gfn)
            elif not has_frame[gfn] and gfn not in rows:
                lost.append(gfn)
        await self._free_rows(stale)
        self.stats.stale_freed = len(stale)
        if lost:
            await self._mark_lost(lost, reason="no durable copy in the store")
        self.faults.hit("after_reconcile")
        paged_out = self.policy.paged_out
        for gfn in store.rows:
            if types[gfn] == paged:
                paged_out(gfn)
        for gfn in adopt:
            self._adopt[gfn] = 0.0
        self.stats.adopted = len(adopt)
        self.stats.recovery_s = time.monotonic() - t0
        log.info(
            "pager.recovered",
            rows=self.stats.recovered_rows,
            stale_freed=len(stale),
            lost=len(lost),
            adopt=len(adopt),
            paged=types.count(P2MType.paged),
            seconds=round(self.stats.recovery_s, 4),
        )

    async def _mark_lost(self, gfns: Sequence[int], *, reason: str) -> list[int]:
        """mark_broken gfns with no good copy, loudly; the gfns actually marked."""
        results = await self._batched("mark_broken", gfns)
        marked = [g for g, r in zip(gfns, results, strict=True) if r == 0]
        for i, g in enumerate(marked):
            if i < LOST_LOG_LIMIT:
                log.error("page.lost", gfn=g, reason=reason)
            self.policy.dropped(g)
        if len(marked) > LOST_LOG_LIMIT:
            log.error("page.lost", count=len(marked), reason=reason, logged=LOST_LOG_LIMIT)
        self.stats.lost += len(marked)
        await self._free_rows((g, r.gen) for g in marked if (r := self.store.rows.get(g)))
        return marked

    # -- events -----------------------------------------------------------------------

    async def _dispatch(self) -> None:
        # Events are handled as the client reads them (no task switch on the way to the
        # page-in worker); the channel only tells when the connection ends.
        self.client.take_events(self._on_event)
        async for ev, fields in self.client.events:
            self._on_event(ev, fields)
        raise ConnectionLost("hv closed the connection")

    def _on_event(self, ev: str, fields: dict[str, Any]) -> None:
        if ev == "target":
            self.hv_target = fields["tot_pages"]
            log.info("pager.target", target=self.hv_target)
            self._wake()
        elif ev == "mem_event":
            new = [job for req in fields["reqs"] if (job := self._submit(req)) is not None]
            if new and not self._pagein_now(new):
                for job in new:
                    self._jobs_send.send_nowait(job)
        self._notify()

    def _submit(self, req: dict[str, Any]) -> _Job | None:
        """Take a request; the new job it opened, for the caller to start or queue."""
        seq = req["seq"]
        if seq in self._seqs:
            return None  # delivered twice: already being served
        self._seqs.add(seq)
        self.stats.requests += 1
        if req["flags"] & FLAG_DROP_PAGE:
            self._drops_send.send_nowait(req)
            return None
        job = self._jobs.get(req["gfn"])
        if job is not None:
            job.reqs.append(req)  # joins the open job: one read, one prep, one resume
            return None
        job = self._jobs[req["gfn"]] = _Job(req["gfn"])
        job.reqs.append(req)
        return job

    # -- page-in ----------------------------------------------------------------------

    async def _pagein_worker(self) -> None:
        async for job in self._jobs_recv:
            jobs = [job]
            while len(jobs) < self.batch:
                try:
                    jobs.append(self._jobs_recv.receive_nowait())
                except trio.WouldBlock:
                    break
            async with self._pagein_slots:
                await self._pagein(jobs)

    def _pagein_now(self, jobs: list[_Job]) -> bool:
        """Start the common page-in at once, in the connection's reader, if nothing in it
        can block: every slot in the page cache and good, `prep` not starved, the
        connection's writer idle. Then only the wait for the replies goes to a task: the
        task switch to a page-in worker (30-50 µs) leaves the populate path. The steps
        and their order are `_pagein`'s; False (nothing done) sends jobs the usual way."""
        store_rows = self.store.rows
        rows = [row for job in jobs if (row := store_rows.get(job.gfn)) is not None]
        if (
            self._prep_starved
            or len(rows) < len(jobs)  # no copy: prep answers tell what happened
            or len(jobs) > min(self.batch, MAX_PAGES_PER_FRAME)
            or sum(len(job.reqs) for job in jobs) > MAX_LIST
            or any(job.evict_fail for job in jobs)
            or not self.client.can_send_now()
        ):
            return False
        try:
            self._pagein_slots.acquire_nowait()  # before the read: none wasted under load
        except trio.WouldBlock:
            return False  # as many page-ins running as there are workers
        assert self._nursery is not None
        try:
            pages = self.store.read_slots_cached(rows)
            if pages is None or not all(type(p) is bytes and p for p in pages):
                self._pagein_slots.release()
                return False  # on the disk, or a failed read: the worker's way handles it
            self.stats.cached_reads += len(rows)
            self.faults.hit("after_read")
            sent, requests = self._prep_and_resume_requests(jobs, pages, [])
            sent.ids = self.client.send_requests_now(requests)
        except BaseException:
            self._pagein_slots.release()  # nothing sent: nothing to wait for
            raise

        async def finish() -> None:
            try:
                await self._prep_and_resume_finish(sent, jobs, rows, [])
            finally:
                self._pagein_slots.release()

        self._nursery.start_soon(finish)
        return True

    def _retry_later(self, job: _Job, delay: float) -> None:
        async def requeue() -> None:
            await trio.sleep(delay)
            self._jobs_send.send_nowait(job)

        assert self._nursery is not None
        self._nursery.start_soon(requeue)

    async def _read(self, rows: Sequence[Row]) -> list[bytes | StoreError]:
        # Slots in the page cache need no worker thread (a thread trip costs more than the
        # read); anything that would block on the disk goes to the thread as before.
        cached = self.store.read_slots_cached(rows)
        if cached is not None:
            self.stats.cached_reads += len(rows)
            return cached
        self.stats.disk_reads += len(rows)
        self.store.pin(rows)
        try:
            return await self.store.read_slots(rows)
        finally:
            self.store.unpin(rows)

    async def _pagein(self, jobs: list[_Job]) -> None:
        """Serve a batch of page-in jobs: read, verify, prep, resume, free the rows."""
        store = self.store
        prep_gfns: list[int] = []
        prep_pages: list[bytes | None] = []
        prep_jobs: list[_Job] = []
        prep_rows: list[Row | None] = []
        done: list[_Job] = []
        lost: list[_Job] = []
        reading: list[tuple[_Job, Row]] = []
        for job in jobs:
            row = store.rows.get(job.gfn)
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
            results = await self._read(rows)
            self.faults.hit("after_read")
            for (job, row), res in zip(reading, results, strict=True):
                if isinstance(res, ChecksumError):
                    # Maybe a flipped bit on the way in: read once more before giving up.
                    self.stats.checksum_errors += 1
                    log.error("store.checksum_mismatch", gfn=job.gfn, gen=row.gen, slot=row.slot)
                    res = (await self._read([row]))[0]
                if isinstance(res, StoreError) and store.rows.get(job.gfn) != row:
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
            and not self._prep_starved
            and len(prep_gfns) <= MAX_PAGES_PER_FRAME
            and all(d is not None for d in prep_pages)
            and sum(len(j.reqs) for j in prep_jobs + done) <= MAX_LIST
        ):
            await self._prep_and_resume(prep_jobs, prep_rows, prep_pages, done)
            return
        if prep_gfns:
            results = []
            for i in range(0, len(prep_gfns), MAX_PAGES_PER_FRAME):
                reply = await self.client.call(
                    "prep",
                    gfns=prep_gfns[i : i + MAX_PAGES_PER_FRAME],
                    pages=prep_pages[i : i + MAX_PAGES_PER_FRAME],
                )
                results += reply["results"]
            self.faults.hit("after_prep")
            for job, row, data, res in zip(prep_jobs, prep_rows, prep_pages, results, strict=True):
                if res == 0:
                    self._loaded(job, row, done, freed)
                elif res == Errno.ENOMEM:
                    job.attempts += 1
                    self._note_enomem(job)
                    self._retry_later(job, min(0.005 * 2**job.attempts, PREP_BACKOFF_MAX))
                elif res == Errno.EINVAL and data is None:
                    lost.append(job)  # frameless, and we hold no copy
                else:
                    # ENOENT: already done (resident again, ballooned, broken): just answer.
                    if res != Errno.ENOENT:
                        log.error("prep.failed", gfn=job.gfn, err=res)
                    done.append(job)
        if lost:
            marked = set(await self._mark_lost([j.gfn for j in lost], reason="no good copy"))
            for job in lost:
                if job.gfn not in marked:
                    log.warning("page.lost_not_marked", gfn=job.gfn)
            done += lost
        if not done:
            return
        self.faults.hit("before_resume")
        rsps = self._close_jobs(done)
        results = []
        for chunk in _chunks(rsps, MAX_LIST):
            results += (await self.client.call("resume", rsps=list(chunk)))["results"]
        self.faults.hit("after_resume")
        self._resumed(rsps, results)
        self._paged_in(done, freed)

    async def _prep_and_resume(
        self,
        prep_jobs: list[_Job],
        prep_rows: list[Row | None],
        pages: list[bytes | None],
        done: list[_Job],
    ) -> None:
        """`prep` and `resume` back to back, without waiting for the `prep` reply between.

        hv serves one connection's requests in order, so the `resume` finds each gfn
        already loaded (`paging_in`) and the vCPU's retried access succeeds: one round
        trip less on every populate. Rows are still freed only for a `prep` that answered
        0. A gfn whose `prep` failed was resumed anyway: its vCPU retries, faults again and
        sends a new request (for ENOMEM, served the careful way: see `_prep_starved`)."""
        sent, requests = self._prep_and_resume_requests(prep_jobs, pages, done)
        sent.ids = await self.client.send_requests(requests)  # one write, one wake-up of hv
        await self._prep_and_resume_finish(sent, prep_jobs, prep_rows, done)

    def _prep_and_resume_requests(
        self, prep_jobs: list[_Job], pages: Sequence[bytes | None], done: list[_Job]
    ) -> tuple[_Sent, list[tuple[str, dict[str, Any]]]]:
        """The `prep` and `resume` requests for these jobs, and what the finish needs."""
        jobs = prep_jobs + done
        sent = _Sent([len(job.reqs) for job in jobs], [_rsp(r) for job in jobs for r in job.reqs])
        self.faults.hit("before_resume")
        requests = [
            ("prep", {"gfns": [j.gfn for j in prep_jobs], "pages": list(pages)}),
            ("resume", {"rsps": sent.rsps}),
        ]
        return sent, requests

    async def _prep_and_resume_finish(
        self, sent: _Sent, prep_jobs: list[_Job], prep_rows: Sequence[Row | None], done: list[_Job]
    ) -> None:
        """The rest of `_prep_and_resume` once both requests are sent: their replies."""
        client = self.client
        jobs = prep_jobs + done
        (prep_id, resume_id), rsps = sent.ids, sent.rsps
        try:
            results = (await client.call_reply(prep_id))["results"]
            self.faults.hit("after_prep")
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
            late_rsps = [_rsp(r) for r in late]
            for chunk in _chunks(late_rsps, MAX_LIST):
                self._resumed(
                    list(chunk), (await client.call("resume", rsps=list(chunk)))["results"]
                )
        self.faults.hit("after_resume")
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
        self, job: _Job, row: Row | None, done: list[_Job], freed: list[tuple[int, int]]
    ) -> None:
        """`prep` answered 0 for job: its requests can be answered, its copy freed."""
        self._prep_starved = False
        done.append(job)
        if row is not None:
            freed.append((job.gfn, row.gen))  # that copy is in a frame now

    def _note_enomem(self, job: _Job) -> None:
        # hv has no free frame. Until a prep succeeds again, page-ins wait for the prep's
        # answer before resuming and retry with a backoff, instead of letting the vCPU fault
        # straight back (a busy loop between hv and the pager while memory is short).
        self._prep_starved = True
        self.stats.prep_enomem += 1
        if job.attempts <= 1 or job.attempts % 20 == 0:
            log.warning("prep.enomem", gfn=job.gfn, attempts=job.attempts)

    def _close_jobs(self, jobs: list[_Job]) -> list[dict[str, Any]]:
        """The responses answering `jobs`' requests. Each job is closed first: a request
        arriving from now on is a new fault."""
        rsps = []
        for job in jobs:
            if self._jobs.get(job.gfn) is job:
                del self._jobs[job.gfn]
            rsps += [_rsp(r) for r in job.reqs]
        return rsps

    def _resumed(self, rsps: list[dict[str, Any]], results: list[int]) -> None:
        for rsp, res in zip(rsps, results, strict=True):
            self._seqs.discard(rsp["seq"])
            if res not in (0, Errno.ENOENT):  # ENOENT: consumed before (redelivery)
                log.error("resume.failed", seq=rsp["seq"], gfn=rsp["gfn"], err=res)

    def _paged_in(self, done: list[_Job], freed: list[tuple[int, int]]) -> None:
        # Rows go in the background (one group commit for many page-ins): the worker is
        # free for the next batch at once. Each was loaded by a prep that answered 0.
        self._queue_free(freed)
        for job in done:
            self.policy.paged_in(job.gfn)
            log.debug("page.paged_in", gfn=job.gfn, requests=len(job.reqs))
        self.stats.paged_in += len(freed)
        if self.config.prefetch:
            self._note_prefetch(j.gfn for j in done)
        self._wake()
        self._notify()

    def _note_prefetch(self, gfns: Iterable[int]) -> None:
        rows = self.store.rows
        for g in gfns:
            for n in range(g + 1, min(g + 1 + self.config.prefetch, self.nr_gfns)):
                if n in rows and n not in self._jobs:
                    self._prefetch[n] = None
        while len(self._prefetch) > PREFETCH_MAX:
            del self._prefetch[next(iter(self._prefetch))]

    def _queue_free(self, keys: list[tuple[int, int]]) -> None:
        """Hand rows whose copy a prep loaded (answered 0) to the freer."""
        for key in keys:
            self._pending_free.add(key)
            self._free_send.send_nowait(key)

    async def _freer(self) -> None:
        """Delete rows of paged-in copies in groups: one SQLite commit for many keys. The
        keys wait FREE_WAIT in `_free_later`, where every disk phase that starts takes
        them into its own commit (`_committer`); the freer commits only what is left."""
        async for key in self._free_recv:
            self._free_later.append(key)
            self._take_free_keys()
            self._notify()
            await trio.sleep(FREE_WAIT)
            self._take_free_keys()
            if self._group_running or not self._free_later:
                continue  # taken by a disk phase, or the running one's loop takes them
            keys, self._free_later = self._free_later, []
            try:
                await self._free_rows(keys)
            finally:
                self._pending_free.difference_update(keys)
            self._notify()

    def _take_free_keys(self) -> None:
        while True:
            try:
                self._free_later.append(self._free_recv.receive_nowait())
            except trio.WouldBlock:
                return

    async def _drop_worker(self) -> None:
        async for req in self._drops_recv:
            reqs = [req]
            while len(reqs) < MAX_LIST:
                try:
                    reqs.append(self._drops_recv.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._serve_drops(reqs)

    async def _serve_drops(self, reqs: list[dict[str, Any]]) -> None:
        """DROP_PAGE: free the copy if the gfn is still `invalid` (the request may be stale)."""
        state = await self._audit_gfns(r["gfn"] for r in reqs)
        keys = []
        for r in reqs:
            if state[r["gfn"]][0] == P2MType.invalid:
                row = self.store.rows.get(r["gfn"])
                if row is not None:
                    keys.append((row.gfn, row.gen))
                self.policy.dropped(r["gfn"])
        await self._free_rows(keys)
        results = await self.client.call("resume", rsps=[_rsp(r) for r in reqs])
        for r, res in zip(reqs, results["results"], strict=True):
            self._seqs.discard(r["seq"])
            if res not in (0, Errno.ENOENT):
                log.error("resume.failed", seq=r["seq"], gfn=r["gfn"], err=res)
        self.stats.drops += len(reqs)
        self._notify()
        log.debug("page.dropped", gfns=[r["gfn"] for r in reqs], freed=len(keys))

    # -- page-out ---------------------------------------------------------------------

    def _busy(self, gfn: int) -> bool:
        # Served by a page-in, waiting for adoption, or in a page-out batch: proactive
        # page-in and page-out never work on the same gfn at once.
        return gfn in self._jobs or gfn in self._adopt or gfn in self._out_inflight

    def _full(self) -> bool:
        if self._full_since is None:
            return False
        if trio.current_time() - self._full_since >= FULL_RETRY:
            self._full_since = None  # try growing the pages file again
            return False
        return True

    async def _pageout(self, gfns: Sequence[int], *, nominate: bool) -> int | None:
        """Page out `gfns` (nominated here, or adopted leftovers); the number evicted, None
        if no batch got going (every gfn refused, or no slot). They are busy
        (`_out_inflight`) until this returns."""
        gfns = list(gfns)
        self._out_inflight.update(gfns)
        try:
            batch = await self._pageout_prepare(gfns, nominate=nominate)
            return None if batch is None else await self._pageout_finish(batch)
        finally:
            self._out_inflight.difference_update(gfns)
            self._notify()

    async def _pageout_pipelined(self, excess: int) -> bool:
        """Page out `excess` gfns in batches, pipelined: up to `config.pipeline` batches are
        on their way at once, each in its own task (nominate and map, write, sync, commit,
        evict), and the disk phases of the batches that are ready together share one
        fdatasync and one index commit (`_persist`). Each batch keeps the crash-safe order:
        its rows are committed only after a fdatasync that followed its writes, and it is
        evicted only after that commit. False if no batch got going."""
        slots = trio.Semaphore(self.config.pipeline)
        started = False

        async def one(victims: list[int]) -> None:
            nonlocal started
            try:
                if await self._pageout(victims, nominate=True) is not None:
                    started = True
            finally:
                slots.release()

        async with trio.open_nursery() as nursery:
            while excess > 0 and not self._stopping and not (started and self._full()):
                await slots.acquire()
                victims = await self.policy.choose(min(self.batch, excess), self._busy)
                if not victims:
                    slots.release()
                    break
                # Busy from now on: the next choice does not take them again.
                self._out_inflight.update(victims)
                excess -= len(victims)
                nursery.start_soon(one, victims)
        return started

    async def _nominate_and_map(self, gfns: list[int]) -> tuple[list[int], list[Any]]:
        """nominate and map `gfns` in one write; the nominated gfns and their map results.

        hv serves the two in order, so each nominated gfn is mapped as `paging_out`. A gfn
        whose nominate failed is mapped too (its copy is dropped): victims are resident as
        far as the policy knows, and if one was not, the map's FOREIGN populate brings it
        back in, which loses nothing."""
        client = self.client
        nom_id, map_id = await client.send_requests(
            [("nominate", {"gfns": gfns}), ("map", {"gfns": gfns})]
        )
        try:
            results = (await client.call_reply(nom_id))["results"]
            pages = (await client.call_reply(map_id))["pages"]
        finally:
            client.forget(nom_id)
            client.forget(map_id)
        ok = [(g, p) for g, r, p in zip(gfns, results, pages, strict=True) if r == 0]
        self.stats.nominate_busy += len(gfns) - len(ok)
        if ok:
            self.faults.hit("after_nominate")
        return [g for g, _ in ok], [p for _, p in ok]

    async def _pageout_prepare(self, gfns: list[int], *, nominate: bool) -> _Batch | None:
        """Page-out, first half: reserve slots, nominate, map, checksum."""
        store = self.store
        full = self._full()
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
                res = await self._batched("nominate", gfns)
                nominated = [g for g, r in zip(gfns, res, strict=True) if r == 0]
                self.stats.nominate_busy += len(gfns) - len(nominated)
                if nominated:
                    self.faults.hit("after_nominate")
            else:
                nominated = gfns
            results = []
            for chunk in _chunks(nominated, MAX_PAGES_PER_FRAME):
                results += (await self.client.call("map", gfns=list(chunk)))["pages"]
        pages: list[bytes] = []
        mapped: list[int] = []
        for g, page in zip(nominated, results, strict=True):
            if isinstance(page, bytes):
                mapped.append(g)
                pages.append(page)
            else:
                # No frame any more (ballooned out meanwhile): nothing to copy.
                self._adopt.pop(g, None)
        if nominated:
            self.faults.hit("after_map")
        store.release(slots[len(mapped) :])
        slots = slots[: len(mapped)]
        if not mapped:
            return None
        rows = []
        for g, slot, page in zip(mapped, slots, pages, strict=True):
            gen = store.next_gen()
            rows.append(Row(g, gen, slot, checksum(g, gen, page)))
        return _Batch(mapped, slots, pages, rows, nominate)

    async def _persist(self, batch: _Batch) -> None:
        """Make `batch` durable: slots written, synced, then the rows naming them committed.

        Group commit: batches that become ready while a disk phase runs wait for the next
        one, which writes all of them, syncs the pages file once and commits all their rows
        in one transaction (`_committer`). StoreError if this batch's write, or the shared
        sync or commit, failed (then none of this batch's rows is committed)."""
        entry = _GroupEntry(batch)
        self._group.append(entry)
        self._notify()
        if not self._group_running:
            self._group_running = True
            assert self._nursery is not None
            self._nursery.start_soon(self._committer)
        await entry.done.wait()
        if entry.error is not None:
            raise entry.error

    async def _committer(self) -> None:
        """Run disk phases while batches wait for one (or rows the freer handed over)."""
        try:
            while self._group or self._free_later:
                group, self._group = self._group, []
                keys, self._free_later = self._free_later, []
                deletes = self.store.to_delete(keys)
                try:
                    deleted = await self._persist_group(group, deletes)
                except BaseException:
                    for e in group:  # no batch of a failed phase may be evicted
                        if e.error is None:
                            e.error = StoreError("disk phase failed", _errno.EIO)
                    raise
                finally:
                    for e in group:
                        e.done.set()
                    self._pending_free.difference_update(keys)
                if deletes and not deleted:  # the commit failed: left for the next reconcile
                    self.stats.store_errors += 1
                    log.warning("store.free_failed", rows=len(deletes))
                if keys:
                    self._notify()
        finally:
            self._group_running = False
            for e in self._group:  # only if cut short: they must not wait for ever
                e.error = StoreError("disk phase abandoned", _errno.EIO)
                e.done.set()
            self._group = []
            self._pending_free.difference_update(self._free_later)
            self._free_later = []

    async def _persist_group(
        self, group: list[_GroupEntry], deletes: Sequence[tuple[int, int]] = ()
    ) -> bool:
        # One disk phase (PageStore.persist): every batch's slots and records, and the
        # free records of `deletes` (rows of paged-in copies), in one write, then one sync.
        # True if it was synced (the store's index then holds it). Crash points fire here,
        # on the event loop.
        if not group and not deletes:
            return False
        rows = [r for e in group for r in e.batch.rows]
        pages = [p for e in group for p in e.batch.pages]
        try:
            written = functools.partial(self.faults.hit, "after_write") if group else None
            await self.store.persist(rows, pages, deletes, written=written)
        except StoreError as exc:
            for e in group:
                e.error = exc
            return False
        if group:
            self.faults.hit("after_fsync")
        return True

    async def _pageout_finish(self, batch: _Batch) -> int:
        """Page-out, second half: write, fdatasync, commit, evict; the number evicted."""
        store = self.store
        slots, rows = batch.slots, batch.rows
        try:
            await self._persist(batch)
        except StoreError as exc:
            # Nothing names these slots: give them back. The gfns stay paging_out (there is
            # no un-nominate): adopt them later.
            store.release(slots)
            now = trio.current_time()
            for g in batch.gfns:
                self._adopt[g] = now + 1.0
            self._store_failed(exc)
            return 0
        self.faults.hit("after_index_commit")
        results = await self._batched("evict", batch.gfns)
        self.faults.hit("after_evict")
        evicted = 0
        refused: list[Row] = []
        for row, res in zip(rows, results, strict=True):
            self._adopt.pop(row.gfn, None)
            if res == 0:
                evicted += 1
                self.policy.paged_out(row.gfn)
            else:
                refused.append(row)
        if refused:
            # Still backed (populated, ballooned or held meanwhile): the row is not needed.
            self.stats.evict_busy += len(refused)
            await self._free_rows((r.gfn, r.gen) for r in refused)
            state = await self._audit_gfns(r.gfn for r in refused)
            now = trio.current_time()
            for r in refused:
                if state[r.gfn][0] == P2MType.paging_out:
                    self._adopt[r.gfn] = now + 1.0  # held by a mapper: try again later
        self.stats.paged_out += evicted
        log.debug(
            "pageout.batch",
            gfns=batch.gfns,
            evicted=evicted,
            refused=len(refused),
            adopted=not batch.nominated,
            rows=len(store.rows),
        )
        return evicted

    def _store_failed(self, exc: StoreError) -> None:
        # The batches of one group commit share the error of its sync or commit: count and
        # log one failure once.
        if exc is self._last_store_error:
            return
        self._last_store_error = exc
        if exc.full:
            self.stats.store_full += 1
            if self._full_since is None:
                log.warning(
                    "store.full",
                    error=str(exc),
                    msg="paging out stops; page-ins go on; nothing paged out is lost",
                )
            self._full_since = trio.current_time()
        else:
            self.stats.store_errors += 1
            log.error("store.write_failed", error=str(exc), errno=_errno.errorcode.get(exc.errno))

    # -- proactive page-in --------------------------------------------------------------

    async def _pagein_proactive(self, gfns: Sequence[int]) -> int:
        """prep `paged` gfns with no request (target rose, prefetch, exit); the number in."""
        rows = [r for g in gfns if (r := self.store.rows.get(g)) is not None]
        if not rows:
            return 0
        results = await self._read(rows)
        good: list[Row] = []
        pages: list[bytes] = []
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
        results = []
        for i in range(0, len(good), MAX_PAGES_PER_FRAME):
            reply = await self.client.call(
                "prep",
                gfns=[r.gfn for r in good[i : i + MAX_PAGES_PER_FRAME]],
                pages=pages[i : i + MAX_PAGES_PER_FRAME],
            )
            results += reply["results"]
        freed: list[tuple[int, int]] = []
        other: list[Row] = []
        for row, res in zip(good, results, strict=True):
            if res == 0:
                freed.append((row.gfn, row.gen))
                self.policy.paged_in(row.gfn, mru=False)
            elif res == Errno.ENOMEM:
                self.stats.prep_enomem += 1
            else:
                other.append(row)
        self._queue_free(freed)
        if other:
            # ENOENT: not paged. Rows of gfns with a frame (or gone) are stale: no page-out
            # batch is in flight (this task runs them), so they may go now.
            state = await self._audit_gfns(r.gfn for r in other)
            await self._free_rows(
                (r.gfn, r.gen)
                for r in other
                if state[r.gfn][1] or state[r.gfn][0] in (P2MType.invalid, P2MType.broken)
            )
        self.stats.proactive_in += len(freed)
        self.stats.paged_in += len(freed)
        log.info("pagein.proactive", paged_in=len(freed), rows=len(self.store.rows))
        self._notify()
        return len(freed)

    # -- balancing --------------------------------------------------------------------

    def _target(self, counters: dict[str, Any]) -> int:
        if self.config.target is not None:
            return self.config.target
        return counters["target"]

    async def _balance_once(self) -> bool:
        """One step toward tot_pages <= target; False when there is nothing to do."""
        if not self.config.balance:
            return False
        now = trio.current_time()
        adopt = [g for g, t in self._adopt.items() if t <= now][: self.batch]
        if adopt:
            await self._pageout(adopt, nominate=False)
            return True
        counters = await self._audit(0, 0)
        tot, target = counters["tot_pages"], self._target(counters)
        if tot > target:
            if self._full() and self.store.free_slots == 0:
                return False
            return await self._pageout_pipelined(tot - target)
        if tot < target and counters["paged_pages"] > 0:
            n = min(self.batch, target - tot)
            return await self._pagein_some(n) > 0
        return False

    async def _pagein_some(self, n: int) -> int:
        """Proactively page in up to `n` gfns, prefetch candidates first."""
        picked: list[int] = []
        while self._prefetch and len(picked) < n:
            g = next(iter(self._prefetch))
            del self._prefetch[g]
            if g in self.store.rows and not self._busy(g):
                picked.append(g)
        if len(picked) < n:
            # From where the last pass stopped: the rows before it are in flight or freed,
            # and walking past them again on every pass was most of a page-in's CPU.
            pending = self._pending_free
            for g, row in self.store.rows.items_from(self._pagein_hand):
                if len(picked) >= n:
                    self._pagein_hand = g
                    break
                if not self._busy(g) and g not in picked and (g, row.gen) not in pending:
                    picked.append(g)
        return await self._pagein_proactive(picked)

    async def _balancer(self) -> None:
        while not self._stopping:
            if await self._balance_once():
                await trio.lowlevel.checkpoint()
                continue
            self._notify()  # idle: what waits for a step sees the pager has settled
            with trio.move_on_after(self.config.recheck_interval):
                await self._wake_event.wait()
            self._wake_event = trio.Event()
        await self._drain()

    # -- exit -------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Page everything back in, then detach (xenpaging's exit)."""
        deadline = trio.current_time() + self.config.drain_timeout
        try:
            with trio.fail_after(self.config.drain_timeout):
                while True:
                    if await self._pagein_some(self.batch):
                        continue
                    if self._adopt and not self._full():
                        # Leftover nominations: no un-nominate exists, so copy, evict, and
                        # bring them back in on the next pass (paging in freed slots first).
                        await self._pageout(list(self._adopt)[: self.batch], nominate=False)
                        continue
                    counters = await self._audit(0, 0)
                    if counters["paged_pages"] == 0 and not self._jobs:
                        # Nothing is out: rows left name resident gfns; leave none behind.
                        await self._scrub()
                        reply = await self.client.request("detach")
                        if reply["ok"]:
                            break
                        log.info("pager.detach_busy", err=reply["err"], msg=reply["msg"])
                    await self._scrub()
                    with trio.move_on_after(0.05):
                        await self._wake_event.wait()
                    self._wake_event = trio.Event()
        except trio.TooSlowError:
            left = await self._audit(0, 0)
            self._drain_error = (
                f"could not page everything in within {self.config.drain_timeout:g} s "
                f"({left['paged_pages']} paged); the store stays durable"
            )
            log.error("pager.drain_failed", msg=self._drain_error, deadline=deadline)
        else:
            self.stats.detached = True
            log.info("pager.detached", rows=len(self.store.rows))
        self._drained.set()

    async def _scrub(self) -> None:
        """Free rows of gfns that are not frameless in the paging path (no batch in flight)."""
        if not self.store.rows:
            return
        state = await self._audit_gfns(self.store.rows)
        await self._free_rows(
            (g, r.gen)
            for g, r in list(self.store.rows.items())
            if not self._busy(g)
            and (state[g][1] or state[g][0] not in (P2MType.paged, P2MType.paging_in_start))
        )

    # -- run --------------------------------------------------------------------------

    async def run(
        self, stop: trio.Event, task_status: trio.TaskStatus[Pager] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Recover, then serve until `stop` is set (then exit as configured)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.recover()
            # hv sent the unanswered requests right after our hello: they are redeliveries.
            while True:
                try:
                    ev, fields = self.client.events.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if ev == "mem_event":
                    self.stats.redelivered += len(fields["reqs"])
                    for req in fields["reqs"]:
                        if (job := self._submit(req)) is not None:
                            self._jobs_send.send_nowait(job)
                elif ev == "target":
                    self.hv_target = fields["tot_pages"]
            nursery.start_soon(self._dispatch)
            nursery.start_soon(self._drop_worker)
            nursery.start_soon(self._freer)
            for _ in range(self.config.concurrency):
                nursery.start_soon(self._pagein_worker)
            nursery.start_soon(self._balancer)
            task_status.started(self)
            await stop.wait()
            log.info("pager.stopping", on_exit=self.config.on_exit)
            if self.config.on_exit == "pagein":
                self._stopping = True
                self._wake()
                await self._drained.wait()
            nursery.cancel_scope.cancel()
        if self._drain_error is not None:
            raise PagerError(self._drain_error)


async def _hello(client: Client, config: PagerConfig) -> dict[str, Any]:
    """hello, retrying EBUSY (the old pager's connection not yet seen closed) with backoff."""
    delay = 0.02
    with trio.move_on_after(config.hello_timeout) as scope:
        while True:
            try:
                return await client.hello(config.domid)
            except OpError as exc:
                if exc.errno != Errno.EBUSY:
                    raise PagerError(f"hello refused: {exc}") from None
                log.info("pager.hello_busy", retry_in=delay, msg=exc.msg)
            await trio.sleep(delay)
            delay = min(delay * 2, HELLO_BACKOFF_MAX)
    assert scope.cancelled_caught
    raise PagerError(f"hello still refused with EBUSY after {config.hello_timeout:g} s")


def find_exception(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`exc` itself or the first exception of `kind` inside (nested) exception groups."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_exception(inner, kind)
            if found is not None:
                return found
    return None


async def run_pager(
    stream: trio.abc.Stream,
    state_dir: str | os.PathLike[str],
    config: PagerConfig | None = None,
    *,
    faults: Faults = NO_FAULTS,
    stop: trio.Event | None = None,
    disk: Disk | None = None,
    task_status: trio.TaskStatus[Pager] = trio.TASK_STATUS_IGNORED,
) -> PagerStats:
    """Run one pager over `stream` (connected to hv's privcmd socket) until `stop` is set.

    Opens (and locks) the store in `state_dir`, says hello (retrying EBUSY), recovers, then
    serves page-ins, follows the target and pages out. `task_status.started(pager)` once
    recovery is done. On `stop`: page everything in and detach (`on_exit="pagein"`) or
    leave the store as it is (`"keep"`). Raises ConnectionLost if hv goes away, PagerError
    on a refused hello or locked store, and `SimulatedCrash` (after dropping the store's
    descriptors, as a dying process would) when a crash point fires in-process. `disk`
    replaces the store's disk (default: `RealDisk(state_dir)`); either is wrapped in a
    `FaultyDisk` when `faults` names store faults.
    """
    config = config or PagerConfig()
    stop = trio.Event() if stop is None else stop
    disk = faulty_disk(disk if disk is not None else RealDisk(state_dir), faults)
    try:
        store = await PageStore.open(disk, lock_wait=config.lock_timeout)
    except BaseException as exc:
        await trio.aclose_forcefully(stream)  # the stream is ours to close on every way out
        if isinstance(exc, StoreError):
            raise PagerError(str(exc)) from None
        raise
    crashed = False
    try:
        async with open_client(stream, "pager") as client:
            info = await _hello(client, config)
            outcome = await store.bind_instance(info["instance"])
            structlog.contextvars.bind_contextvars(domid=info["domid"])
            log.info(
                "pager.attached",
                epoch=info.get("epoch"),
                instance=info["instance"],
                nr_gfns=info["nr_gfns"],
                store=outcome,
                rows=len(store.rows),
                policy=config.policy,
            )
            pager = Pager(client, store, config, faults, info)
            await pager.run(stop, task_status)
            log.info("pager.exit", **pager.stats.as_dict())
            return pager.stats
    except BaseException as exc:
        crash = find_exception(exc, SimulatedCrash)
        if crash is not None:
            crashed = True
            await store.abandon()
            raise crash from None
        if find_exception(exc, trio.Cancelled) is not None:
            raise  # cancelled from outside: never turn that into one of our errors
        if find_exception(exc, ConnectionLost) or find_exception(exc, ConnectionClosed):
            raise ConnectionLost(f"connection to hv lost: {exc!r}") from None
        error = find_exception(exc, PagerError)
        if error is not None:
            raise error from None
        raise
    finally:
        if not crashed:
            await store.close()


__all__ = [
    "ConnectionLost",
    "Pager",
    "PagerConfig",
    "PagerError",
    "PagerStats",
    "run_pager",
]
