"""The pager's in-memory index, gfn -> Row, in arrays indexed by gfn.

xenpaging keeps its gfn -> slot map as an array over the domain's gfns; so does this, with
the generation and the checksum beside the slot: 17 bytes per gfn up to the highest one
paged out (8 for gen, 4 for slot, 4 for crc, 1 for "has a row", which memchr finds), where
a dict of Row tuples took about 240 bytes per paged gfn (a tuple, four int objects and a
dict entry each). The store's generations start at 1; 0 marks "no row".

Rows that the arrays cannot hold go to a small dict instead, so that nothing the index
file contains is refused here: a gfn far above the others (the arrays grow to a gfn only
while that keeps them within `_DENSE_SLACK` gfns plus twice the rows they hold, so one odd
gfn does not allocate gigabytes), or a field out of the arrays' range (a damaged index).
"""

from __future__ import annotations

from array import array
from collections.abc import ItemsView, Iterable, Iterator, Mapping, MutableMapping
from itertools import compress
from typing import Any, Final, NamedTuple

#: The arrays may cover this many gfns beyond twice the rows they hold (16 MiB at most).
_DENSE_SLACK: Final = 1 << 20

_U32: Final = 1 << 32
_U64: Final = 1 << 64


class Row(NamedTuple):
    """One index row: gfn's copy of generation `gen` lives in `slot`, checksum `crc`."""

    gfn: int
    gen: int
    slot: int
    crc: int


class RowIndex(MutableMapping[int, Row]):
    """gfn -> its durable Row; a mapping, with `get`, `in` and iteration in gfn order
    (the few rows outside the arrays come last)."""

    __slots__ = ("_crc", "_dense", "_gen", "_has", "_other", "_slot")

    def __init__(self, rows: Iterable[Row] = ()) -> None:
        self._other: dict[int, Row] = {}
        self._load(list(rows))  # the arrays, and `_dense`: the rows they hold

    # -- the mapping ------------------------------------------------------------------

    def get(self, gfn: int, default: Any = None) -> Any:
        """gfn's row, or `default` (the hot path: no exception raised and caught)."""
        if 0 <= gfn < len(self._gen):
            gen = self._gen[gfn]
            if gen:
                return Row(gfn, gen, self._slot[gfn], self._crc[gfn])
        return self._other.get(gfn, default) if self._other else default

    def __getitem__(self, gfn: int) -> Row:
        row = self.get(gfn)
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
                gens.frombytes(bytes(8 * grow))
                self._slot.frombytes(bytes(4 * grow))
                self._crc.frombytes(bytes(4 * grow))
                self._has.extend(bytes(grow))
            if not gens[gfn]:
                self._dense += 1
                self._has[gfn] = 1
            gens[gfn] = row.gen
            self._slot[gfn] = row.slot
            self._crc[gfn] = row.crc
            return
        self._drop_dense(gfn)
        self._other[gfn] = row

    def __delitem__(self, gfn: int) -> None:
        if not self._drop_dense(gfn):
            del self._other[gfn]

    def __len__(self) -> int:
        return self._dense + len(self._other)

    def __iter__(self) -> Iterator[int]:
        yield from compress(range(len(self._has)), self._has)
        yield from list(self._other)

    def gens(self) -> Iterator[tuple[int, int]]:
        """(gfn, gen) of every row, at C speed for the rows in the arrays (recovery walks
        every row once: 100,000s at a restart)."""
        yield from zip(
            compress(range(len(self._has)), self._has), filter(None, self._gen), strict=True
        )
        yield from [(gfn, row.gen) for gfn, row in self._other.items()]

    def items_from(self, start: int) -> Iterator[tuple[int, Row]]:
        """(gfn, row) pairs from gfn `start` on, then from 0 up to it, then the rows kept
        aside: a cursor over the rows that does not walk the gfns without one."""
        has, gens, slots, crcs = self._has, self._gen, self._slot, self._crc
        start = min(max(start, 0), len(has))
        for lo, hi in ((start, len(has)), (0, start)):
            gfn = has.find(1, lo, hi)
            while gfn >= 0:
                if gens[gfn]:  # still there (the caller may change the index meanwhile)
                    yield gfn, Row(gfn, gens[gfn], slots[gfn], crcs[gfn])
                gfn = has.find(1, gfn + 1, hi)
        yield from list(self._other.items())

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
        limit = 2 * len(last) + _DENSE_SLACK
        dense = []
        for r in last.values():
            if r.gfn < limit and _storable(r):
                dense.append(r)
            else:
                self._other[r.gfn] = r
        n = max((r.gfn for r in dense), default=-1) + 1
        gens, slots, crcs = (
            array("Q", bytes(8 * n)),
            array("I", bytes(4 * n)),
            array("I", bytes(4 * n)),
        )
        has = bytearray(n)  # 1 where the arrays hold a row: found by memchr, not a loop
        for gfn, gen, slot, crc in dense:
            gens[gfn] = gen
            slots[gfn] = slot
            crcs[gfn] = crc
            has[gfn] = 1
        self._gen, self._slot, self._crc, self._has = gens, slots, crcs, has
        self._dense = len(dense)

    def _fits(self, row: Row) -> bool:
        gfn = row.gfn
        return _storable(row) and (
            gfn < len(self._gen) or gfn < 2 * (self._dense + 1) + _DENSE_SLACK
        )

    def _drop_dense(self, gfn: int) -> bool:
        if 0 <= gfn < len(self._gen) and self._gen[gfn]:
            self._gen[gfn] = 0
            self._has[gfn] = 0
            self._dense -= 1
            return True
        return False


def _storable(row: Row) -> bool:
    """Whether the arrays can hold the row's fields (a damaged index may hold anything)."""
    return row.gfn >= 0 and 0 < row.gen < _U64 and 0 <= row.slot < _U32 and 0 <= row.crc < _U32


class _Items(ItemsView[int, Row]):
    _mapping: RowIndex

    def __iter__(self) -> Iterator[tuple[int, Row]]:
        return self._mapping.items_from(0)


__all__ = ["Row", "RowIndex"]
