"""The store against a tiny model under random operation sequences, crashes included.

Operations follow the pipelines' protocol (reserve, one persist: write, sync, mirror; free
by (gfn, gen)) over an in-memory disk; a crash cuts the power at a step of a page-out
(slots and records written but not synced, or synced) and reopens the store. After every
step: every durable row reads back the bytes of its generation, no two rows share a slot,
no free slot is named by a row, and the model's rows are exactly the store's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from memdisk import MemDisk, PowerCut

from pager import PageStore, Row, checksum
from protocol import PAGE_SIZE

GFNS = st.integers(0, 15)


def run(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return trio.run(fn, *args)


def data_for(gfn: int, gen: int) -> bytes:
    return (gfn.to_bytes(2, "little") + gen.to_bytes(4, "little")) * (PAGE_SIZE // 6) + b"\0" * (
        PAGE_SIZE % 6
    )


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.disk = MemDisk()
        self.store: PageStore = run(self._open)
        self.model: dict[int, int] = {}  # gfn -> gen of its durable row

    async def _open(self) -> PageStore:
        return await PageStore.open(self.disk, lock_wait=1.0)

    def teardown(self) -> None:
        run(self.store.close)

    @rule(gfns=st.lists(GFNS, min_size=1, max_size=5, unique=True), crash=st.integers(0, 3))
    def page_out(self, gfns: list[int], crash: int) -> None:
        """A batch; crash 1: after the write, 2: after the sync; 0 or 3: no crash."""
        store = self.store
        slots = store.reserve(len(gfns))
        rows = []
        for g, s in zip(gfns, slots, strict=True):
            gen = store.next_gen()
            rows.append(Row(g, gen, s, checksum(g, gen, data_for(g, gen))))
        if crash == 1:
            self.disk.crash_in(2)  # the write lands, the sync never runs
            with pytest.raises(PowerCut):
                run(store.persist, rows, [data_for(r.gfn, r.gen) for r in rows])
            return self._crash()
        run(store.persist, rows, [data_for(r.gfn, r.gen) for r in rows])
        for r in rows:
            self.model[r.gfn] = r.gen
        if crash == 2:
            return self._crash()

    @rule(gfn=GFNS, stale=st.booleans())
    def free(self, gfn: int, stale: bool) -> None:
        row = self.store.rows.get(gfn)
        if row is None:
            return
        gen = row.gen - 1 if stale else row.gen  # a stale key must not free the new row
        run(self.store.delete_rows, [(gfn, gen)])
        if not stale:
            del self.model[gfn]

    @rule()
    def crash(self) -> None:
        self._crash()

    def _crash(self) -> None:
        run(self.store.abandon)
        self.disk.power_loss()
        self.store = run(self._open)

    @invariant()
    def agrees_with_the_model(self) -> None:
        store = self.store
        assert {g: r.gen for g, r in store.rows.items()} == self.model
        slots = [r.slot for r in store.rows.values()]
        assert len(slots) == len(set(slots))
        assert not set(slots) & set(store.slots._free)
        rows = list(store.rows.values())
        assert run(store.read_slots, rows) == [data_for(r.gfn, r.gen) for r in rows]


StoreModel.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
test_store_model = StoreModel.TestCase
