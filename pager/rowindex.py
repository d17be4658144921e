"""The pager's in-memory index, gfn -> Row, in arrays indexed by gfn.

xenpaging keeps its gfn -> slot map as an array over the domain's gfns; so does this, with
the generation and the checksum beside the slot: 12 bytes per gfn up to the highest one
paged out (4 for slot, 4 for crc, 4 for the generation relative to a base), where a dict
of Row tuples took about 240 bytes per paged gfn (a tuple, four int objects and a dict
entry each). A relative generation of 0 marks "no row"; a regular expression over the
generation array's bytes finds the next row at C speed.

Rows that the arrays cannot hold go to a small dict instead, so that nothing the store
contains is refused here: a gfn far above the others (the arrays grow to a gfn only
while that keeps them within `_DENSE_SLACK` gfns plus twice the rows they hold, so one odd
gfn does not allocate gigabytes), a field out of the arrays' range (a damaged store), or a
generation more than 2**32 - 1 past the base (after some 4 billion page-outs; when many
rows are aside, the arrays are rebuilt on a new base).
"""

from __future__ import annotations

import re
from array import array
from collections.abc import ItemsView, Iterable, Iterator, Mapping, MutableMapping, Sequence
from itertools import compress
from typing import Any, Final, NamedTuple

#: The arrays may cover this many gfns beyond twice the rows they hold (16 MiB at most).
_DENSE_SLACK: Final = 1 << 20

_U32: Final = 1 << 32
_U64: Final = 1 << 64
_NONZERO: Final = re.compile(rb"[^\x00]")


class Row(NamedTuple):
    """One index row: gfn's copy of generation `gen` lives in `slot`, checksum `crc`."""

    gfn: int
    gen: int
    slot: int
    crc: int


def rows_of(
    gfns: Sequence[int], gens: Sequence[int], slots: Sequence[int], crcs: Sequence[int]
) -> list[Row]:
    """`Row(gfn, gen, slot, crc)` of each, for a batch in one call (no call of the named
    tuple's Python `__new__` per row)."""
    new = tuple.__new__
    return [new(Row, fields) for fields in zip(gfns, gens, slots, crcs, strict=True)]


class RowIndex(MutableMapping[int, Row]):
    """gfn -> its durable Row; a mapping, with `get`, `in` and iteration in gfn order
    (the few rows outside the arrays come last)."""

    __slots__ = ("_base", "_crc", "_dense", "_gen", "_other", "_slot")

    def __init__(self, rows: Iterable[Row] = ()) -> None:
        self._other: dict[int, Row] = {}
        self._load(list(rows))  # the arrays, `_base`, and `_dense`: the rows they hold

    @classmethod
    def from_columns(
        cls, gfns: list[int], gens: list[int], slots: list[int], crcs: list[int]
    ) -> RowIndex:
        """The index of rows given column by column (a store's open: the arrays filled at
        C speed when every row fits them, row by row otherwise). ValueError if a gfn comes
        twice (the caller decides which row wins)."""
        index = cls()
        if not gfns:
            return index
        low_gen, top_gen, top_gfn = min(gens), max(gens), max(gfns)
        base = 0 if top_gen < _U32 else low_gen - 1
        if (
            min(gfns) < 0
            or top_gfn >= 2 * len(gfns) + _DENSE_SLACK
            or low_gen < 1
            or top_gen - base >= _U32
            or max(slots) >= _U32
        ):
            rows = list(map(Row, gfns, gens, slots, crcs))
            if len({r.gfn for r in rows}) != len(rows):
                raise ValueError("a gfn has two rows")
            index._load(rows)
            return index
        n = top_gfn + 1
        arrays = [array("I", [0]) * n for _ in range(3)]  # exactly n (no growth slack)
        runs = key_runs(gfns)
        rel = list(map((-base).__add__, gens)) if base else gens
        for arr, values in zip(arrays, (rel, slots, crcs), strict=True):
            scatter(arr, gfns, values, runs)
        if n - arrays[0].count(0) != len(gfns):
            raise ValueError("a gfn has two rows")
        index._gen, index._slot, index._crc = arrays
        index._base, index._dense = base, len(gfns)
        return index

    # -- the mapping ------------------------------------------------------------------

    def get(self, gfn: int, default: Any = None) -> Any:
        """gfn's row, or `default` (the hot path: no exception raised and caught)."""
        if 0 <= gfn < len(self._gen):
            gen = self._gen[gfn]
            if gen:
                return Row(gfn, gen + self._base, self._slot[gfn], self._crc[gfn])
        return self._other.get(gfn, default) if self._other else default

    def __getitem__(self, gfn: int) -> Row:
        row: Row | None = self.get(gfn)
        if row is None:
            raise KeyError(gfn)
        return row

    def __contains__(self, gfn: object) -> bool:
        if type(gfn) is int and 0 <= gfn < len(self._gen) and self._gen[gfn]:
            return True
        return gfn in self._other

    def __setitem__(self, gfn: int, row: Row) -> None:
        if row.gfn != gfn:
            raise ValueError(f"row of gfn {row.gfn} stored under gfn {gfn}")
        if self._fits(row):
            self._other.pop(gfn, None)
            gens = self._gen
            if gfn >= len(gens):
                grow = gfn + 1 - len(gens)
                gens.frombytes(bytes(4 * grow))
                self._slot.frombytes(bytes(4 * grow))
                self._crc.frombytes(bytes(4 * grow))
            if not gens[gfn]:
                self._dense += 1
            gens[gfn] = row.gen - self._base
            self._slot[gfn] = row.slot
            self._crc[gfn] = row.crc
            return
        self._drop_dense(gfn)
        self._other[gfn] = row
        if len(self._other) > max(1024, self._dense // 8) and _storable(row, row.gen - 1):
            self._load(list(self.values()))  # generations outgrew the base: a new one

    def put_many(self, rows: Sequence[Row]) -> list[Row]:
        """`self[row.gfn] = row` for each row, in order (a disk phase's rows: one call, the
        checks of `__setitem__` inline); the rows they replaced that named another slot."""
        if self._other:  # rare (module doc): the general path
            return self._put_each(rows)
        moved: list[Row] = []
        if rows:
            top = max(row.gfn for row in rows)
            have = len(self._gen)
            if have <= top < 2 * self._dense + _DENSE_SLACK:  # as `_fits` allows
                grow = bytes(4 * (top + 1 - have))  # new gfns past the arrays: grown once
                self._gen.frombytes(grow)
                self._slot.frombytes(grow)
                self._crc.frombytes(grow)
        gens, slots, crcs, base = self._gen, self._slot, self._crc, self._base
        for i, row in enumerate(rows):
            gfn, gen, slot, crc = row
            rel = gen - base
            if not (
                0 <= gfn < len(gens)
                and 0 < rel < _U32
                and gen < _U64
                and 0 <= slot < _U32
                and 0 <= crc < _U32
            ):
                # A new gfn past the arrays, or a field they cannot hold.
                moved += self._put_each([row])
                if self._other or self._gen is not gens:  # rebuilt or set aside: the general path
                    return moved + self.put_many(rows[i + 1 :])
                continue
            had = gens[gfn]
            if had:
                if slots[gfn] != slot:
                    moved.append(Row(gfn, had + base, slots[gfn], crcs[gfn]))
            else:
                self._dense += 1
            gens[gfn] = rel
            slots[gfn] = slot
            crcs[gfn] = crc
        return moved

    def _put_each(self, rows: Iterable[Row]) -> list[Row]:
        """`put_many` through `__setitem__`, a row at a time."""
        moved = []
        for row in rows:
            old = self.get(row.gfn)
            self[row.gfn] = row
            if old is not None and old.slot != row.slot:
                moved.append(old)
        return moved

    def slots_of(self, gfns: Iterable[int]) -> list[int]:
        """Each gfn's row's slot, -1 where it has no row."""
        return self._field_of(gfns, self._slot, 0, 2)

    def gens_of(self, gfns: Iterable[int]) -> list[int]:
        """Each gfn's row's generation, -1 where it has no row."""
        return self._field_of(gfns, self._gen, self._base, 1)

    def _field_of(self, gfns: Iterable[int], column: array[int], add: int, field: int) -> list[int]:
        """Each gfn's row's field (`column` + `add` in the arrays, `field` of a row kept
        aside), -1 where it has no row."""
        gens, n = self._gen, len(self._gen)
        out = []
        for gfn in gfns:
            if 0 <= gfn < n and gens[gfn]:
                out.append(column[gfn] + add)
            else:
                row = self._other.get(gfn) if self._other else None
                out.append(-1 if row is None else row[field])
        return out

    def pop_slots(self, gfns: Iterable[int]) -> list[int]:
        """Delete each gfn's row (KeyError if one has none, the rows before it deleted);
        the slots they named, in order."""
        gens, slots, n = self._gen, self._slot, len(self._gen)
        out = []
        for gfn in gfns:
            if 0 <= gfn < n and gens[gfn]:
                out.append(slots[gfn])
                gens[gfn] = 0
                self._dense -= 1
            else:
                out.append(self._other.pop(gfn).slot)
        return out

    def __delitem__(self, gfn: int) -> None:
        if not self._drop_dense(gfn):
            del self._other[gfn]

    def __len__(self) -> int:
        return self._dense + len(self._other)

    def __iter__(self) -> Iterator[int]:
        yield from compress(range(len(self._gen)), self._gen)
        yield from list(self._other)

    def gens(self) -> Iterator[tuple[int, int]]:
        """(gfn, gen) of every row, at C speed for the rows in the arrays (recovery walks
        every row once: 100,000s at a restart)."""
        yield from zip(
            compress(range(len(self._gen)), self._gen),
            map(self._base.__add__, filter(None, self._gen)),
            strict=True,
        )
        yield from [(gfn, row.gen) for gfn, row in self._other.items()]

    def gen_columns(self) -> tuple[list[int], list[int]]:
        """The gfns and the generations of every row, as two lists (`gens` without a tuple
        per row: recovery reads 100,000s of them)."""
        gens = self._gen
        gfns = list(compress(range(len(gens)), gens))
        out = list(map(self._base.__add__, filter(None, gens)))
        for gfn, row in self._other.items():
            gfns.append(gfn)
            out.append(row.gen)
        return gfns, out

    def items_from(self, start: int) -> Iterator[tuple[int, Row]]:
        """(gfn, row) pairs from gfn `start` on, then from 0 up to it, then the rows kept
        aside: a cursor over the rows that does not walk the gfns without one."""
        gens, slots, crcs = self._gen, self._slot, self._crc
        start = min(max(start, 0), len(gens))
        for lo, hi in ((start, len(gens)), (0, start)):
            gfn = self._next(lo, hi)
            while gfn >= 0:
                gen = gens[gfn] if gfn < len(gens) else 0
                if gen:  # still there (the caller may change the index meanwhile)
                    yield gfn, Row(gfn, gen + self._base, slots[gfn], crcs[gfn])
                gfn = self._next(gfn + 1, hi)
        yield from list(self._other.items())

    def _next(self, lo: int, hi: int) -> int:
        """The first gfn in [lo, hi) with a row in the arrays, or -1."""
        hi = min(hi, len(self._gen))
        if lo >= hi:
            return -1
        found = _NONZERO.search(memoryview(self._gen).cast("B"), 4 * lo, 4 * hi)
        return -1 if found is None else found.start() // 4

    def rows_in_slots(self, lo: int, hi: int) -> list[Row]:
        """The rows whose slot is in [lo, hi): a walk of every row (for the rare rebuild of
        a header page from the index; the walk's tests run at C speed)."""
        gens, slots = self._gen, self._slot
        hits = compress(range(len(slots)), map(lo.__le__, slots))
        out = [self[g] for g in hits if slots[g] < hi and gens[g]]
        return out + [r for r in self._other.values() if lo <= r.slot < hi]

    def items(self) -> ItemsView[int, Row]:
        """(gfn, row) pairs, as a view (built without a lookup per gfn)."""
        return _Items(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return len(self) == len(other) and dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dict

    def __repr__(self) -> str:
        return f"RowIndex({dict(self.items())!r})"

    # -- internals --------------------------------------------------------------------

    def _load(self, rows: list[Row]) -> None:
        # A store's open: the arrays sized once, then one store per field and row (a call
        # of __setitem__ per row would take three times as long).
        last = {r.gfn: r for r in rows}  # the later row of a gfn wins, as in a dict
        self._other = {}
        gens_ok = [r.gen for r in last.values() if 0 < r.gen < _U64]
        # Rows up to 2**31 older than the newest fit, leaving 2**31 new generations room.
        base = max(min(gens_ok, default=1), max(gens_ok, default=1) - (1 << 31)) - 1
        limit = 2 * len(last) + _DENSE_SLACK
        dense = []
        for r in last.values():
            if r.gfn < limit and _storable(r, base):
                dense.append(r)
            else:
                self._other[r.gfn] = r
        n = max((r.gfn for r in dense), default=-1) + 1
        gens, slots, crcs = (array("I", [0]) * n for _ in range(3))
        for gfn, gen, slot, crc in dense:
            gens[gfn] = gen - base
            slots[gfn] = slot
            crcs[gfn] = crc
        self._gen, self._slot, self._crc, self._base = gens, slots, crcs, base
        self._dense = len(dense)

    def _fits(self, row: Row) -> bool:
        gfn = row.gfn
        return _storable(row, self._base) and (
            gfn < len(self._gen) or gfn < 2 * (self._dense + 1) + _DENSE_SLACK
        )

    def _drop_dense(self, gfn: int) -> bool:
        if 0 <= gfn < len(self._gen) and self._gen[gfn]:
            self._gen[gfn] = 0
            self._dense -= 1
            return True
        return False


def _storable(row: Row, base: int) -> bool:
    """Whether the arrays can hold the row's fields (a damaged store may hold anything)."""
    return (
        row.gfn >= 0
        and 0 < row.gen - base < _U32
        and row.gen < _U64
        and 0 <= row.slot < _U32
        and 0 <= row.crc < _U32
    )


def key_runs(keys: list[int]) -> list[int] | None:
    """Where `keys` stops counting up by one (the starts of its runs after the first), or
    None when the runs are too short to be worth assigning as slices. Each run is found by
    comparing doubling, then halving, blocks of it at C speed."""
    n = len(keys)
    breaks: list[int] = []
    i = 0
    while i < n:
        k0 = keys[i] - i  # in this run, keys[m] == k0 + m
        j, step = i + 1, 1
        while j < n:
            top = min(n, j + step)
            if keys[j:top] == list(range(k0 + j, k0 + top)):
                j, step = top, step * 2
            elif step == 1:
                break
            else:
                step //= 2
        if j < n:
            breaks.append(j)
            if len(breaks) > n // 8:
                return None
        i = j
    return breaks


def scatter(arr: array[int], keys: list[int], values: list[int], runs: list[int] | None) -> None:
    """arr[k] = v for each key and value: each run of consecutive keys (`key_runs`) as one
    slice assignment (C speed), or one by one when the runs are short."""
    if runs is None:
        for k, v in zip(keys, values, strict=True):
            arr[k] = v
        return
    code = arr.typecode
    for i, j in zip([0, *runs], [*runs, len(keys)], strict=True):
        k = keys[i]
        arr[k : k + j - i] = array(code, values[i:j])


class _Items(ItemsView[int, Row]):
    _mapping: RowIndex

    def __iter__(self) -> Iterator[tuple[int, Row]]:
        return self._mapping.items_from(0)


__all__ = ["Row", "RowIndex", "key_runs", "rows_of", "scatter"]
