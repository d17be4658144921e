"""A domain's p2m table in compact arrays: no Python object per gfn.

Per gfn: one type byte (`bytearray`, code 0 is `ram_rw` so a fresh table costs one
allocation), one 32-bit frame number (`array('I')`, NO_FRAME when frameless) and one
accessed byte (`bytearray`): 6 bytes a gfn. Foreign holds are rare, so they live in a dict.
Every change of type or frame goes through `set`, which keeps the counters (`tot_pages`,
`paged_pages`, a count per type) in step, so `status` never scans the table.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Final, cast

from protocol import PAGING_TYPES, P2MType

from .frames import NO_FRAME

_PAGING_CODES: Final = frozenset(int(t) for t in PAGING_TYPES)
_MMIO: Final = int(P2MType.mmio)
_IN_START: Final = int(P2MType.paging_in_start)

#: Types that always have a frame, never have one, or (paging_in_start) may have one.
ALWAYS_BACKED: Final = frozenset(
    {P2MType.ram_rw, P2MType.paging_out, P2MType.paging_in, P2MType.mmio}
)
NEVER_BACKED: Final = frozenset({P2MType.paged, P2MType.invalid, P2MType.broken})

# bytes.translate table: type code -> 1 if that type always has a frame (paging_in_start
# is fixed up gfn by gfn, it is the one type where the answer depends on the gfn).
_HAS_FRAME_BY_TYPE: Final = bytes(1 if i in ALWAYS_BACKED else 0 for i in range(256))


#: P2MType by wire code (codes are 0..7, dense).
_BY_CODE: tuple[P2MType, ...] = tuple(sorted(P2MType, key=int))
assert [int(t) for t in _BY_CODE] == list(range(len(_BY_CODE)))


def _gather(values: bytearray | array, gfns: Sequence[int]) -> tuple[int, ...]:
    """values[g] for each of `gfns` (non-empty), as a tuple built in C."""
    if len(gfns) == 1:
        return (values[gfns[0]],)
    return cast(tuple[int, ...], itemgetter(*gfns)(values))


class P2M:
    """Type, frame, accessed bit and hold count of each of `nr_gfns` gfns."""

    def __init__(self, frames: array, mmio_gfns: Iterable[int] = ()) -> None:
        nr_gfns = len(frames)
        self.nr_gfns = nr_gfns
        self.types = bytearray(nr_gfns)  # all ram_rw
        self.frames = frames
        self.accessed = bytearray(nr_gfns)
        self.holds: dict[int, int] = {}
        for g in set(mmio_gfns):
            self.types[g] = _MMIO
        self.counts = [0] * len(P2MType)
        self.counts[_MMIO] = nr_gfns - self.types.count(0)
        self.counts[P2MType.ram_rw] = nr_gfns - self.counts[_MMIO]
        self.tot_pages = self.counts[P2MType.ram_rw]
        self.paged_pages = 0

    def type(self, gfn: int) -> P2MType:
        """The p2m type of gfn."""
        return _BY_CODE[self.types[gfn]]  # P2MType(code), without the enum call's cost

    def frame(self, gfn: int) -> int | None:
        """The frame backing gfn, or None."""
        f = self.frames[gfn]
        return None if f == NO_FRAME else f

    def has_frame(self, gfn: int) -> bool:
        """Whether gfn is backed by a frame."""
        return self.frames[gfn] != NO_FRAME

    def held(self, gfn: int) -> bool:
        """Whether a foreign mapping holds gfn's page."""
        return gfn in self.holds

    def set_type(self, gfn: int, t: P2MType) -> None:
        """Change gfn's type, keeping its frame (and the counters)."""
        self.set_backing(gfn, t, self.frames[gfn])

    def set_backing(self, gfn: int, t: P2MType, frame: int) -> None:
        """Change gfn's type and frame (NO_FRAME: none), keeping the counters in step."""
        self._account(self.types[gfn], self.frames[gfn] != NO_FRAME, -1)
        self.types[gfn] = t
        self.frames[gfn] = frame
        self._account(int(t), frame != NO_FRAME, +1)

    def types_of(self, gfns: Sequence[int]) -> tuple[int, ...]:
        """The type codes of `gfns`, in order (gathered in C)."""
        return _gather(self.types, gfns)

    def set_types(self, gfns: Sequence[int], t: P2MType) -> None:
        """`set_type(g, t)` for each of `gfns`, which must be distinct (the counters move
        once per kind of gfn, not once per gfn)."""
        self._retype(gfns, int(t), _gather(self.frames, gfns), drop=False)

    def drop_frames(self, gfns: Sequence[int], t: P2MType) -> array:
        """`set_backing(g, t, NO_FRAME)` for each of `gfns`, which must be distinct: the
        frames they had, in order (NO_FRAME for a gfn that had none), for the caller to free."""
        old = _gather(self.frames, gfns)
        self._retype(gfns, int(t), old, drop=True)
        frames = self.frames
        for g in gfns:
            frames[g] = NO_FRAME
        return array("I", old)

    def _retype(
        self, gfns: Sequence[int], code: int, frames: tuple[int, ...], *, drop: bool
    ) -> None:
        # The counters depend on each gfn's type and whether it has a frame: counted by
        # kind (one kind when the gfns share a type, as a batch of victims does).
        srcs = _gather(self.types, gfns)
        if srcs.count(srcs[0]) == len(srcs):
            frameless = frames.count(NO_FRAME)
            kinds = {(srcs[0], True): len(srcs) - frameless, (srcs[0], False): frameless}
        else:
            kinds = Counter(zip(srcs, (f != NO_FRAME for f in frames), strict=True))
        types = self.types
        for g in gfns:
            types[g] = code
        for (t, has), n in kinds.items():
            if n:
                self._account(t, has, -n)
                self._account(code, has and not drop, n)

    def _account(self, t: int, has_frame: bool, n: int) -> None:
        self.counts[t] += n
        if has_frame:
            if t != _MMIO:
                self.tot_pages += n
        elif t in _PAGING_CODES:
            self.paged_pages += n

    def has_frame_flags(self, start: int, count: int) -> bytearray:
        """One 0/1 byte per gfn of [start, start+count): whether it has a frame."""
        types = self.types[start : start + count]
        flags = bytearray(types.translate(_HAS_FRAME_BY_TYPE))
        i = types.find(_IN_START)
        while i >= 0:
            flags[i] = self.frames[start + i] != NO_FRAME
            i = types.find(_IN_START, i + 1)
        return flags

    def hold(self, gfn: int) -> None:
        """One more foreign reference to gfn's page."""
        self.holds[gfn] = self.holds.get(gfn, 0) + 1

    def unhold(self, gfn: int) -> None:
        """One foreign reference to gfn's page fewer."""
        n = self.holds[gfn] - 1
        if n:
            self.holds[gfn] = n
        else:
            del self.holds[gfn]

    def violations(self, prefix: str) -> list[str]:
        """Invariants 1 (per gfn) and 2 of DESIGN.md for this table; [] when they hold."""
        out: list[str] = []
        counts = [0] * len(P2MType)
        tot = paged = 0
        types, frames = self.types, self.frames
        for p2mt in P2MType:
            counts[p2mt] = types.count(int(p2mt))
        # Invariant 1: the type agrees with the frame. Scan only where it can disagree.
        flags = self.has_frame_flags(0, self.nr_gfns)
        for gfn, (t, f, should) in enumerate(zip(types, frames, flags, strict=True)):
            has = f != NO_FRAME
            if t == _IN_START:
                should = has
            if has != bool(should):
                out.append(
                    f"{prefix}gfn {gfn}: type {P2MType(t).name} {'has' if has else 'lacks'} a frame"
                )
                if len(out) > 20:
                    out.append(f"{prefix}... (more)")
                    return out
            if has:
                if t != _MMIO:
                    tot += 1
            elif t in _PAGING_CODES:
                paged += 1
        for gfn in self.holds:
            if frames[gfn] == NO_FRAME:
                out.append(f"{prefix}gfn {gfn} is held but has no frame")
        # Invariant 2: the counters agree with the table.
        if tot != self.tot_pages:
            out.append(f"{prefix}tot_pages is {self.tot_pages}, the table says {tot}")
        if paged != self.paged_pages:
            out.append(f"{prefix}paged_pages is {self.paged_pages}, the table says {paged}")
        if counts != self.counts:
            out.append(f"{prefix}type counts {self.counts} disagree with the table {counts}")
        return out
