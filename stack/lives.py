"""The pager's restart history: the latest lives in full, older ones folded into counts.

A stack whose pager dies and restarts for days would otherwise keep one record per
incarnation forever. `LifeLog` keeps the last `LIVES_KEPT` in full (what the report lists
and the supervisor looks at) and folds each older, finished one into counters through a
`fold` function, so the report's totals still count every life.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Generic, Protocol, TypeVar

#: Lives kept in full: far more than any report reader looks at; ~0.5 KB each.
LIVES_KEPT: Final = 256


class _Life(Protocol):
    rc: int | None


L = TypeVar("L", bound=_Life)


class LifeLog(Generic[L]):
    """A list of lives, numbered from 0 in start order, of which only the last `keep` are
    held; `len` is every life ever appended, `folded` the counts of those let go."""

    def __init__(self, fold: Callable[[Iterable[L]], Counter[str]], keep: int = LIVES_KEPT):
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self._fold = fold
        self._keep = keep
        self._kept: deque[L] = deque()
        self._started = 0
        self.folded: Counter[str] = Counter()

    def append(self, life: L) -> None:
        """A new life; the oldest finished ones beyond `keep` are folded away."""
        self._kept.append(life)
        self._started += 1
        while len(self._kept) > self._keep and self._kept[0].rc is not None:
            self.folded += self._fold([self._kept.popleft()])

    def __len__(self) -> int:
        return self._started

    def __iter__(self) -> Iterator[L]:
        """The lives still held, oldest first."""
        return iter(self._kept)

    def __getitem__(self, i: int) -> L:
        """Life `i` (negative: from the end); IndexError for one already folded away."""
        if i < 0:
            return self._kept[i]
        j = i - (self._started - len(self._kept))
        if j < 0:
            raise IndexError(f"life {i} was folded into the counts")
        return self._kept[j]

    def stats(self) -> Counter[str]:
        """`fold` of every life: the folded ones and those held."""
        return self.folded + self._fold(self._kept)
