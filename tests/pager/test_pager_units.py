"""Pure parts of the pager, without I/O: recovery's reconcile and the state's gfn rule."""

from __future__ import annotations

import random
from array import array

import pytest

from pager.config import PagerStats
from pager.recovery import reconcile
from pager.rowindex import Row, RowIndex
from pager.state import GfnClash, PagerState
from pager.store_format import is_slot
from pager.store_slots import SlotTable
from protocol import P2MType, pack_bits

T = P2MType


def audit(*gfns: tuple[P2MType, bool]) -> tuple[bytes, bytes]:
    """hv's audit of gfns 0.. as (types, frames bitmap)."""
    return bytes(t for t, _ in gfns), pack_bits(bytes(f for _, f in gfns))


def rows(*keys: tuple[int, int]) -> RowIndex:
    return RowIndex(Row(g, gen, slot, 0) for slot, (g, gen) in enumerate(keys))


def test_reconcile_keeps_rows_of_frameless_paged_gfns() -> None:
    types, frames = audit((T.paged, False), (T.paging_in_start, False), (T.ram_rw, True))
    out = reconcile(types, frames, rows((0, 5), (1, 6)))
    assert out == ([], [], [])


def test_reconcile_frees_rows_no_gfn_needs() -> None:
    types, frames = audit(
        (T.ram_rw, True),  # paged in before the crash freed its row
        (T.paging_in_start, True),  # populated and loaded: the frame has the bytes
        (T.invalid, False),  # ballooned out
        (T.paging_out, True),  # re-copied: its row may predate its contents
        (T.paged, False),
    )
    out = reconcile(types, frames, rows((0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (9, 6)))
    assert out.stale == [(0, 1), (1, 2), (2, 3), (3, 4), (9, 6)]  # 9: beyond nr_gfns
    assert out.lost == []
    assert out.adopt == [3]


def test_reconcile_reports_frameless_gfns_without_a_row_as_lost() -> None:
    types, frames = audit(
        (T.paged, False),
        (T.paging_in_start, False),
        (T.paging_in_start, True),  # has its frame: nothing lost
        (T.paging_out, True),
        (T.broken, False),  # already reported
    )
    out = reconcile(types, frames, rows())
    assert out.lost == [0, 1]
    assert out.adopt == [3]
    assert out.stale == []


def test_reconcile_at_scale_matches_a_per_gfn_reading() -> None:
    n = 10_000
    kinds = list(T)
    types = bytes(kinds[(g * 7) % len(kinds)] for g in range(n))
    has = bytes((g % 3 == 0) for g in range(n))
    index = rows(*((g, g + 1) for g in range(0, n, 2)))
    out = reconcile(types, pack_bits(has), index)
    needed = (T.paged, T.paging_in_start)
    assert out.stale == [(g, g + 1) for g in range(0, n, 2) if has[g] or types[g] not in needed]
    assert out.lost == [g for g in range(n) if types[g] in needed and not has[g] and g not in index]
    assert out.adopt == [g for g in range(n) if types[g] == T.paging_out]


def test_page_out_and_proactive_page_in_never_share_a_gfn() -> None:
    state = PagerState(PagerStats())
    state.claim_out([1, 2, 3])
    assert state.claim_in([2, 3, 4, 5]) == [4, 5]  # page-out holds 2 and 3
    with pytest.raises(GfnClash):
        state.claim_out([5, 6])  # a proactive page-in holds 5
    assert 6 not in state.out_inflight  # nothing claimed by the refused call
    state.release_in([4, 5])
    state.claim_out([5, 6])
    state.release_out([1, 2, 3, 5, 6])
    assert state.claim_in([1, 2, 3, 5, 6]) == [1, 2, 3, 5, 6]


def test_busy_gfns_are_left_to_their_job() -> None:
    state = PagerState(PagerStats())
    job = state.submit({"seq": 1, "gfn": 7, "vcpu_id": 0, "flags": 0})
    assert job is not None and state.busy(7)
    state.adopt[8] = 0.0
    assert state.claim_in([6, 7, 8, 9]) == [6, 9]  # a demand page-in, an adoption
    assert state.submit({"seq": 1, "gfn": 7, "vcpu_id": 0, "flags": 0}) is None  # seen
    assert state.stats.requests == 1


def test_slot_reserve_takes_free_slots_last_first_then_grows_past_trailers() -> None:
    """`SlotTable.reserve` against the one-slot-at-a-time definition, at random."""
    rng = random.Random(14)
    for _ in range(5000):
        free = [rng.randrange(1000) for _ in range(rng.randrange(10))]
        high, n, grow = rng.randrange(1000, 1100), rng.randrange(70), rng.random() < 0.7
        want, left, top = list(free), [], high
        while want and len(left) < n:
            left.append(want.pop())
        while grow and len(left) < n:
            if is_slot(top):
                left.append(top)
            top += 1
        table = SlotTable(free=array("I", free), high=high)
        assert table.reserve(n, grow=grow) == left
        assert (list(table._free), table.high) == (want, top)
