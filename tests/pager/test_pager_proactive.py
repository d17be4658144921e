"""Proactive page-in, pipelined: batches overlap up to the pipeline, no gfn taken twice."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from pager.config import PagerStats
from pager.proactive import Proactive
from pager.rowindex import Row, RowIndex
from pager.state import PagerState


class _Store:
    def __init__(self, gfns: range) -> None:
        self.rows = RowIndex(Row(g, 1, g, 0) for g in gfns)


class _Commit:
    """Reads every row's page; freed keys are recorded (the freer is not under test)."""

    def __init__(self, gfns: range) -> None:
        self.store = _Store(gfns)
        self.pending_free: set[tuple[int, int]] = set()
        self.freed: list[tuple[int, int]] = []

    async def read(self, rows: Sequence[Row]) -> list[bytes]:
        await trio.lowlevel.checkpoint()
        return [bytes([r.gfn % 256]) * 4096 for r in rows]

    def queue_free(self, keys: list[tuple[int, int]]) -> None:
        self.freed += keys
        self.pending_free.update(keys)


class _Hv:
    """prep answers 0 for every gfn once `gate` opens, counting the calls in flight."""

    def __init__(self, state: PagerState) -> None:
        self.state = state
        self.inflight = self.most = 0
        self.prepped: list[int] = []
        self.gate = trio.Event()

    async def prep(self, gfns: list[int], pages: list[bytes | None]) -> list[int]:
        assert all(g in self.state.in_inflight for g in gfns)  # held while in flight
        assert all(p == bytes([g % 256]) * 4096 for g, p in zip(gfns, pages, strict=True))
        self.inflight += 1
        self.most = max(self.most, self.inflight)
        await self.gate.wait()
        self.inflight -= 1
        self.prepped += gfns
        return [0] * len(gfns)


class _Policy:
    def paged_in(self, gfn: int, *, mru: bool) -> None:
        """The policy's bookkeeping is not under test here: nothing to record."""


@pytest.mark.parametrize("pipeline", [1, 3])
async def test_pipelined_page_in_overlaps_batches_and_takes_each_gfn_once(pipeline: int) -> None:
    gfns = range(100, 130)
    state = PagerState(PagerStats())
    commit = _Commit(gfns)
    hv = _Hv(state)
    state.claim_out([105, 106])  # a page-out holds these: never taken
    proactive = Proactive(
        hv=hv,  # type: ignore[arg-type]  # the fakes have what Proactive calls
        state=state,
        commit=commit,  # type: ignore[arg-type]
        policy=_Policy(),  # type: ignore[arg-type]
        stats=state.stats,
    )
    done: list[int] = []

    async def run() -> None:
        done.append(await proactive.pipelined(25, pipeline=pipeline, batch=4))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await trio.testing.wait_all_tasks_blocked()
            assert hv.inflight == pipeline  # `pipeline` batches on their way, no more
            hv.gate.set()
    want = [g for g in gfns if g not in (105, 106)][:25]
    assert done == [25] and sorted(hv.prepped) == want  # each gfn once, none held twice
    assert sorted(commit.freed) == [(g, 1) for g in want]
    assert hv.most == pipeline and not state.in_inflight
