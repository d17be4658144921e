"""Batched pager ops decide and change gfns in bulk (`PagerOps._simple_many`, the `map`
fast path, `P2M.set_types` / `drop_frames`); each gfn's outcome must be the one it gets
alone. Two domains run the same random program: one gets each op's gfn list in one call,
the other one call per gfn. Results, types, frames present, counters, holds, page bytes
and the invariants must agree after every step (frame numbers may differ: frames freed
together go back to the pool in another order)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from hv import Domain, FramePool
from protocol import PAGE_SIZE, P2MType

NR = 12
MMIO_GFN = 11
GFN = st.integers(-1, NR + 1)  # out of range on both sides
GFNS = st.lists(GFN, max_size=10)  # duplicates allowed

STEPS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["nominate", "evict", "mark_broken", "unmap"]), GFNS),
        st.tuples(st.just("map"), GFNS, st.booleans()),
        st.tuples(st.sampled_from(["prep", "balloon_out", "balloon_in", "write"]), GFNS),
    ),
    max_size=30,
)


def _domain() -> Domain:
    return Domain(
        1,
        FramePool(2 * NR),
        nr_gfns=NR,
        vcpus=1,
        ring_size=4,
        ring_mode="reattach",
        mmio_gfns=[MMIO_GFN],
        instance="batched",
    )


def _page(g: int, step: int) -> bytes:
    return bytes([(g * 7 + step) % 251 + 1]) * PAGE_SIZE


def _run(d: Domain, holder: dict[int, int], step: tuple[Any, ...], i: int, one_by_one: bool) -> Any:
    op, gfns = step[0], step[1]
    calls = [[g] for g in gfns] if one_by_one else [gfns]
    out: list[Any] = []
    for part in calls:
        if op == "map":
            out += [
                p if isinstance(p, str) else bytes(p)
                for p in d.map(part, hold=step[2], holder=holder, copy=False)
            ]
        elif op == "unmap":
            out += d.unmap(part, holder)
        elif op == "prep":
            out += d.prep(part, [_page(g, i) for g in part])
        elif op == "balloon_out":
            out += d.decrease_reservation(part)
        elif op == "balloon_in":
            out += d.increase_reservation(part)
        elif op == "write":  # a guest's write to a frame, straight into the pool
            for g in part:
                if 0 <= g < NR and d.p2m.has_frame(g) and d.p2m.type(g) is P2MType.ram_rw:
                    d.pool.write(d.p2m.frames[g], 0, _page(g, i)[:8])
        else:
            out += getattr(d, op)(part)
    return out


def _state(d: Domain, holder: dict[int, int]) -> Any:
    p2m = d.p2m
    pages = [d.pool.read(p2m.frames[g]) if p2m.has_frame(g) else None for g in range(NR)]
    return (
        bytes(p2m.types),
        [p2m.has_frame(g) for g in range(NR)],
        list(p2m.counts),
        p2m.tot_pages,
        p2m.paged_pages,
        dict(p2m.holds),
        dict(holder),
        pages,
        dict(d.counters),
        d.pool.free,
        [(r.gfn, r.flags) for r in d.ring.unanswered()],
        d.violations(),
    )


@pytest.mark.parametrize("debug", [False, True])
@settings(max_examples=300, deadline=None)
@given(steps=STEPS)
def test_a_batch_gives_each_gfn_what_it_gets_alone(
    steps: list[tuple[Any, ...]], debug: bool
) -> None:
    # Debug lines on or off (the bulk path skips its per-gfn loop when they are off); the
    # autouse `info_logs` fixture puts the configuration back after the test.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if debug else logging.INFO
        ),
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    batched, single = _domain(), _domain()
    holds_b: dict[int, int] = {}
    holds_s: dict[int, int] = {}
    for i, step in enumerate(steps):
        got = _run(batched, holds_b, step, i, one_by_one=False)
        want = _run(single, holds_s, step, i, one_by_one=True)
        assert got == want, step
        assert _state(batched, holds_b) == _state(single, holds_s), step
        assert batched.violations() == []


def test_a_batch_of_victims_moves_the_counters_once() -> None:
    d = _domain()
    gfns = list(range(8))
    assert d.nominate(gfns) == [0] * 8
    assert d.evict(gfns) == [0] * 8
    assert d.p2m.paged_pages == 8 and d.p2m.counts[P2MType.paged] == 8
    assert d.pool.free == 2 * NR - NR + 8
    assert d.violations() == []
