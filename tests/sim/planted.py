"""Known bugs, planted in the real pager for one test each, that the sim must catch.

Each `plant_*` patches production code through pytest's `monkeypatch` (undone after the
test). Bodies copied from the pager keep their original shape with the one change marked
`# BUG`. They name the pager's private methods: when those move, `monkeypatch.setattr`
fails loudly and the plant is ported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import pager.store
import pager.store_open
from pager import StoreError
from pager.drops import Drops, rsp
from pager.hvcalls import HvCalls
from pager.pagein import PageIn
from pager.pageout import PageOut
from pager.store import PageStore
from pager.store_format import EXTENT_BYTES, SLOT_SIZE
from protocol import P2MType


def plant_evict_before_durable(mp: pytest.MonkeyPatch) -> None:
    """Page-out evicts its batch before the slots are synced and the rows committed."""
    finish, batched = PageOut._finish, HvCalls.batched
    early: dict[tuple[int, ...], Any] = {}

    async def early_finish(self: Any, batch: Any) -> int:
        key = tuple(batch.gfns)
        early[key] = await batched(self.hv, "evict", batch.gfns)  # BUG: before it is durable
        return await finish(self, batch)

    async def planted_batched(self: Any, op: str, gfns: Any) -> Any:
        if op == "evict" and tuple(gfns) in early:
            return early.pop(tuple(gfns))  # the evict the real code makes, already made
        return await batched(self, op, gfns)

    mp.setattr(PageOut, "_finish", early_finish)
    mp.setattr(HvCalls, "batched", planted_batched)


def plant_free_before_prep(mp: pytest.MonkeyPatch) -> None:
    """Page-in frees a copy's row before its prep answered."""
    original = PageIn._prep_and_resume

    async def prep_and_resume(self: Any, jobs: Any, rows: Any, pages: Any, done: Any) -> None:
        early = [(j.gfn, r.gen) for j, r in zip(jobs, rows, strict=True) if r is not None]
        await self.commit.free_rows(early)  # BUG: the copy goes before the prep answered 0
        await original(self, jobs, rows, pages, done)

    mp.setattr(PageIn, "_prep_and_resume", prep_and_resume)


def plant_stale_drop(mp: pytest.MonkeyPatch) -> None:
    """DROP_PAGE frees the copy without checking the gfn is still ballooned out."""

    async def serve(self: Any, reqs: list[dict[str, Any]]) -> None:
        rows = self.commit.store.rows
        keys = []
        for r in reqs:  # BUG: no audit: a stale request frees a live copy
            row = rows.get(r["gfn"])
            if row is not None:
                keys.append((row.gfn, row.gen))
            self.policy.dropped(r["gfn"])
        await self.commit.free_rows(keys)
        await self.hv.resume([rsp(r) for r in reqs])
        for r in reqs:
            self.state.seqs.discard(r["seq"])
        self.state.notify()

    mp.setattr(Drops, "serve", serve)
    assert P2MType.invalid  # the check the real code makes


def plant_resume_without_prep(mp: pytest.MonkeyPatch) -> None:
    """Page-in answers the requests without loading the page (no prep)."""

    async def prep_and_resume(self: Any, jobs: Any, rows: Any, pages: Any, done: Any) -> None:
        sent, requests = self._requests(jobs, pages, done)
        resume_id = (await self.client.send_requests(requests[1:]))[0]  # BUG: prep not sent
        try:
            results = (await self.client.call_reply(resume_id))["results"]
        finally:
            self.client.forget(resume_id)
        self._resumed(sent.rsps, results)
        self._close_jobs(jobs + done)
        self._paged_in(jobs + done, [])

    mp.setattr(PageIn, "_prep_and_resume", prep_and_resume)


def plant_skip_checksum(mp: pytest.MonkeyPatch) -> None:
    """Slot reads are served without verifying their checksum."""

    def verified(r: Any, data: bytes) -> bytes | StoreError:
        return data  # BUG: no checksum

    mp.setattr(pager.store, "_verified", verified)


class _PageOutNoSync:
    """The pages file, where the sync of a page-out's disk phase (data slots were written
    since the last sync) makes nothing durable. Decided from the phase's own writes, which
    the store's phase lock keeps apart: swapping the store's file object around a call
    instead leaked the bug into concurrent phases (and, nested, into every later sync)."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self._data = False  # a data slot written since the last sync

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    async def pwritev(self, writes: Any) -> None:
        self._data |= any(off % EXTENT_BYTES != 0 or len(data) != SLOT_SIZE for off, data in writes)
        await self._file.pwritev(writes)

    async def sync(self) -> None:
        data, self._data = self._data, False
        if data:
            return  # BUG: returns without making the page-out's writes durable
        await self._file.sync()


def plant_skip_pageout_sync(mp: pytest.MonkeyPatch) -> None:
    """A page-out's disk phase skips its sync: pages are evicted before their copy is
    durable. Only a power loss shows it. (Its sibling, a free's sync skipped, is harmless
    in this store: tests/pager/test_pager_store_power.py shows why.)"""
    persist = PageStore.persist

    async def planted(self: Any, rows: Any, *args: Any, **kwargs: Any) -> Any:
        if self._file is not None and not isinstance(self._file, _PageOutNoSync):
            self._file = _PageOutNoSync(self._file)
        return await persist(self, rows, *args, **kwargs)

    mp.setattr(PageStore, "persist", planted)


def plant_header_read_once(mp: pytest.MonkeyPatch) -> None:
    """The store's open gives up a header page at its first failed read: a passing EIO
    loses every gfn of the extent (the open rewrites the page empty)."""
    mp.setattr(pager.store_open, "HEADER_READ_ATTEMPTS", 1)  # BUG: no second read


PLANTED: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "evict_before_durable": plant_evict_before_durable,
    "free_before_prep": plant_free_before_prep,
    "stale_drop": plant_stale_drop,
    "resume_without_prep": plant_resume_without_prep,
    "skip_checksum": plant_skip_checksum,
    "skip_pageout_sync": plant_skip_pageout_sync,
    "header_read_once": plant_header_read_once,
}
