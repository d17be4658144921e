"""The pages file's slot table: which slots a row names, which are free, which are pinned.

Bookkeeping only, no I/O (the store, pager/store.py, owns the disk phases): a slot
returns to the free list only when `PageStore` says the record that freed it is durable
(`freed`), and only once no reader has it pinned."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence

from .rowindex import Row
from .store_format import is_slot


class SlotTable:
    """The slots of one pages file (as `load_pages` found them, or empty)."""

    def __init__(
        self, used: bytearray | None = None, free: array[int] | None = None, high: int = 0
    ) -> None:
        self.used = used if used is not None else bytearray()  # slot -> 1 if a row names it
        self._free = free if free is not None else array("I")  # popped from the end
        self.high = high  # slots below this exist (or existed) in the file
        self._pins: dict[int, int] = {}  # slot -> readers in flight
        self._unpin_free: set[int] = set()  # freed while pinned: free once unpinned

    def reserve(self, n: int, *, grow: bool = True) -> list[int]:
        """Take `n` slots for a page-out batch (fewer if `grow` is false and few are free)."""
        free = self._free
        take = min(n, len(free))
        out = free[len(free) - take :].tolist()[::-1]  # as popped one by one: last first
        del free[len(free) - take :]
        if grow and len(out) < n:
            # New slots from `high` on, skipping sector trailers: each sector has
            # SECTOR_RECORDS slots, so this many numbers always hold enough of them.
            want = n - len(out)
            fresh = [s for s in range(self.high, self.high + 2 * want + 1) if is_slot(s)][:want]
            out += fresh
            self.high = fresh[-1] + 1
        return out

    def release(self, slots: Iterable[int]) -> None:
        """Give back reserved slots that no persisted record names (a failed batch)."""
        self._free.extend(slots)

    @property
    def free_count(self) -> int:
        """Slots ready for reuse without growing the pages file."""
        return len(self._free)

    def pin(self, rows: Iterable[Row]) -> None:
        """Keep these rows' slots from reuse while they are being read."""
        for r in rows:
            self._pins[r.slot] = self._pins.get(r.slot, 0) + 1

    def unpin(self, rows: Iterable[Row]) -> None:
        """Release pins taken by `pin`."""
        for r in rows:
            left = self._pins[r.slot] - 1
            if left:
                self._pins[r.slot] = left
                continue
            del self._pins[r.slot]
            if r.slot in self._unpin_free:
                self._unpin_free.discard(r.slot)
                self._free.append(r.slot)

    def named(self, slot: int) -> bool:
        """Whether a row names `slot`."""
        return slot < len(self.used) and self.used[slot] != 0

    def unnameable(self, slots: Iterable[int]) -> list[int]:
        """Of `slots`, those a new row may not name: named by a row already, negative,
        or a sector trailer (`is_slot`)."""
        used = self.used
        n = len(used)
        return [s for s in slots if s < 0 or (s < n and used[s]) or not is_slot(s)]

    def name(self, slot: int) -> None:
        """A durable row names `slot` now."""
        if slot >= len(self.used):
            self.used.extend(bytes(slot + 1 - len(self.used) + 1024))
        self.used[slot] = 1

    def name_many(self, slots: Sequence[int]) -> None:
        """Durable rows name `slots` now (`name` for each)."""
        if not slots:
            return
        top = max(slots)
        if top >= len(self.used):
            self.used.extend(bytes(top + 1 - len(self.used) + 1024))
        used = self.used
        for slot in slots:
            used[slot] = 1

    def freed(self, slot: int) -> None:
        """The record that freed `slot` is durable: reusable once no reader pins it."""
        self.used[slot] = 0
        if slot in self._pins:
            self._unpin_free.add(slot)
        else:
            self._free.append(slot)
