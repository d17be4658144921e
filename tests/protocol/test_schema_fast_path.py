"""ListOf checks common lists (gfns, pages, results) a whole list at a time; whatever the
list, it must accept and reject exactly what checking each element accepts and rejects."""

from __future__ import annotations

import enum
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.messages import ERRNO, GFNS, PAGE_GFNS, RESULTS
from protocol.schema import Bin, Invalid, ListOf, OneOf


class _Code(enum.IntEnum):
    ZERO = 0
    ONE = 1


def _one_by_one(lst: ListOf, v: list[Any]) -> list[Any] | None:
    """The reference: every element through the element checker (None: rejected)."""
    try:
        return [lst.elem(e) for e in v]
    except Invalid:
        return None


def _checked(lst: ListOf, v: list[Any]) -> list[Any] | None:
    try:
        return lst(v)
    except Invalid:
        return None


_ELEMENTS = st.one_of(
    st.integers(-5, 2**32 + 5),
    st.sampled_from([0, 1, -1, 2**31, 2**32 - 1, 2**32, True, False, _Code.ONE, 1.0]),
    st.sampled_from(["EBUSY", "ENOENT", "nope", ""]),
    st.binary(min_size=0, max_size=8),
    st.sampled_from([bytes(4096), bytes(4095), bytearray(4096), None]),
)

PAGES = ListOf(OneOf((Bin(4096, 4096), ERRNO)), 255)
LISTS = [GFNS, PAGE_GFNS, RESULTS, PAGES, ListOf(Bin(1, 4), 10)]


@pytest.mark.parametrize("lst", LISTS, ids=["gfns", "page_gfns", "results", "pages", "bins"])
@given(v=st.lists(_ELEMENTS, max_size=12))
def test_whole_list_check_agrees_with_each_element(lst: ListOf, v: list[Any]) -> None:
    assert _checked(lst, v) == _one_by_one(lst, v)


@pytest.mark.parametrize(
    ("lst", "v", "ok"),
    [
        (GFNS, [1, 2, 3], True),
        (GFNS, [1, True, 3], False),  # a bool is no int
        (GFNS, [1, -1], False),  # below the range
        (GFNS, [1, _Code.ONE], True),  # an int subclass, as before
        (RESULTS, [0, 0, "EBUSY"], True),  # mixed: element by element
        (RESULTS, [0, 1], False),
        (PAGES, [bytes(4096)] * 3, True),
        (PAGES, [bytes(4096), bytes(4095)], False),
        (PAGES, [bytes(4096), "ENOENT"], True),
    ],
)
def test_examples(lst: ListOf, v: list[Any], ok: bool) -> None:
    assert (_checked(lst, v) is not None) is ok
