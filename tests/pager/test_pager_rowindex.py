"""The pager's in-memory index behaves exactly as the dict of rows it replaced."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pager.rowindex import Row, RowIndex

# Gfns and fields around the edges of the arrays: negative and huge gfns, a generation of
# 0, values past 32 and 64 bits go to the side dict; the rest to the arrays.
GFNS = st.one_of(st.integers(0, 64), st.sampled_from([-1, 1 << 21, 1 << 40]))
ROWS = st.builds(
    Row,
    gfn=GFNS,
    gen=st.one_of(st.integers(1, 5), st.sampled_from([0, (1 << 64) - 1, 1 << 64])),
    slot=st.one_of(st.integers(0, 9), st.sampled_from([(1 << 32) - 1, 1 << 32])),
    crc=st.one_of(st.integers(0, 9), st.sampled_from([(1 << 32) - 1, -1])),
)
# Rows the arrays hold: `put_many`'s fast path runs only while no row is kept aside.
PLAIN_ROWS = st.builds(
    Row,
    gfn=st.integers(0, 64),
    gen=st.integers(1, 5),
    slot=st.integers(0, 9),
    crc=st.integers(0, 9),
)
OPS = st.lists(st.one_of(st.tuples(st.just("set"), ROWS), st.tuples(st.just("del"), GFNS)))


def _same(index: RowIndex, model: dict[int, Row]) -> None:
    assert index == model and model == index
    assert len(index) == len(model)
    assert sorted(index) == sorted(model)
    assert dict(index.items()) == model
    assert sorted(index.gens()) == sorted((g, r.gen) for g, r in model.items())
    assert sorted(zip(*index.gen_columns(), strict=True)) == sorted(index.gens())
    for gfn in [*model, -1, 0, 3, 65, 1 << 21, 1 << 40]:
        assert (gfn in index) == (gfn in model)
        assert index.get(gfn) == model.get(gfn)
    # A cursor: from `start` up, then from 0 up to it, then the rows kept aside.
    for start in (-5, 0, 3, 30, 65, 1 << 30):
        got = list(index.items_from(start))
        assert dict(got) == model and len(got) == len(model)
        dense = [g for g, _ in got if g not in index._other]
        lo = min(max(start, 0), len(index._gen))
        assert dense == sorted(g for g in dense if g >= lo) + sorted(g for g in dense if g < lo)
        assert [g for g, _ in got[len(dense) :]] == list(index._other)


@settings(max_examples=300, deadline=None)
@given(start=st.lists(ROWS), ops=OPS)
def test_row_index_is_a_dict_of_rows(start: list[Row], ops: list[tuple[str, object]]) -> None:
    """Built from rows (a store's open) and then changed row by row, the index answers
    every question as a dict would, whatever the rows hold."""
    index = RowIndex(start)
    model = {r.gfn: r for r in start}
    _same(index, model)
    for op, arg in ops:
        if op == "set":
            assert isinstance(arg, Row)
            index[arg.gfn] = arg
            model[arg.gfn] = arg
        else:
            assert isinstance(arg, int)
            if arg in model:
                del index[arg]
                del model[arg]
            else:
                with pytest.raises(KeyError):
                    del index[arg]
        _same(index, model)


@settings(max_examples=300, deadline=None)
@given(
    start=st.one_of(st.lists(PLAIN_ROWS), st.lists(ROWS)),
    batches=st.lists(st.lists(st.one_of(PLAIN_ROWS, PLAIN_ROWS, ROWS), max_size=8), max_size=6),
)
@example(start=[Row(0, 1, 0, 0), Row(5, 1, 1, 0)], batches=[[Row(3, 2, 2, 0)]])  # a hole filled
def test_put_many_is_a_setitem_per_row(start: list[Row], batches: list[list[Row]]) -> None:
    """A disk phase's rows stored at once (`put_many`) leave the index as one store per
    row would, and name exactly the replaced rows that had another slot; `slots_of` and
    `gens_of` are a lookup per gfn, `pop_slots` a `del` per gfn."""
    index = RowIndex(start)
    model = {r.gfn: r for r in start}
    for rows in batches:
        moved = []
        for r in rows:
            old = model.get(r.gfn)
            if old is not None and old.slot != r.slot:
                moved.append(old)
            model[r.gfn] = r
        assert index.put_many(rows) == moved
        _same(index, model)
        probe = [r.gfn for r in rows] + [-1, 0, 65, 1 << 40]
        want = [model[g].slot if g in model else -1 for g in probe]
        assert index.slots_of(probe) == want
        assert index.gens_of(probe) == [model[g].gen if g in model else -1 for g in probe]
    # pop_slots: a del per gfn, each row's slot in order; a gfn with no row raises KeyError
    gone = sorted(model)[::2]
    assert index.pop_slots(gone) == [model[g].slot for g in gone]
    for g in gone:
        del model[g]
    _same(index, model)
    with pytest.raises(KeyError):
        index.pop_slots([1 << 50])


def test_a_row_stored_under_another_gfn_is_refused() -> None:
    index = RowIndex()
    with pytest.raises(ValueError):
        index[1] = Row(2, 1, 0, 0)
    assert len(index) == 0


def test_twelve_bytes_per_row() -> None:
    """The reason for the arrays: 12 bytes per paged gfn, where a dict of Row tuples took
    about 240. 100,000 rows over 100,000 gfns, traced by tracemalloc."""
    rows = [Row(g, g + 1, g, g * 7 % (1 << 32)) for g in range(100_000)]
    tracemalloc.start()
    try:
        index = RowIndex(rows)
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(index) == 100_000
    assert size / len(index) < 13


def test_generations_far_past_the_base_move_the_base() -> None:
    """Generations are kept as 32-bit offsets from a base: rows beyond 2**32 - 1 past it
    go aside, and once many have, the arrays are rebuilt on a new base (only the rows
    older than that stay aside)."""
    index = RowIndex([Row(0, 5, 0, 0), Row(1, 6, 1, 1)])
    far = 5 + (1 << 32)
    rows = {0: Row(0, 5, 0, 0), 1: Row(1, 6, 1, 1)}
    for g in range(2, 1100):
        rows[g] = index[g] = Row(g, far + g, g, g)  # type: ignore[misc]
    assert dict(index.items()) == rows
    assert set(index._other) <= {0, 1}  # rebased: the new rows are in the arrays
    del index[0], index[1]
    assert sorted(index.gens()) == [(g, far + g) for g in range(2, 1100)]


def test_one_far_gfn_does_not_grow_the_arrays() -> None:
    """A damaged index naming gfn 2**40 must not allocate 16 TiB: such a row is kept
    aside, and found like any other."""
    far = Row(1 << 40, 1, 0, 0)
    index = RowIndex([Row(1, 1, 1, 1)])
    tracemalloc.start()
    try:
        index[far.gfn] = far
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size < 1 << 20
    assert index.get(far.gfn) == far and far.gfn in index and len(index) == 2
