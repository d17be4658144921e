"""Recovery: audit hv, reconcile the store's rows with it (pure), free, mark lost, adopt.

`reconcile` decides, from nothing but hv's audit and the store's rows; `recover` carries
the decision out (DESIGN.md "Recovery").
"""

from __future__ import annotations

import operator
import re
from itertools import compress
from typing import NamedTuple, Protocol

import structlog
import trio

from protocol import MAX_AUDIT_COUNT, P2MType, unpack_bits

from .commit import Committer
from .config import PagerStats
from .drops import Drops
from .faults import CrashPoint, Faults
from .hvcalls import HvCalls
from .policy import Policy
from .state import PagerState

log = structlog.get_logger("pager")

_ONE = re.compile(b"\x01")
_PAGING_OUT = re.compile(bytes([int(P2MType.paging_out)]))
_NEEDED = bytes(int(t in (P2MType.paged, P2MType.paging_in_start)) for t in range(256))


class Rows(Protocol):
    """What `reconcile` reads of the store's rows."""

    def gen_columns(self) -> tuple[list[int], list[int]]:
        """The gfns and the generations of every row, as two lists."""
        ...


class Reconciled(NamedTuple):
    """What recovery does to the store and to hv."""

    stale: list[tuple[int, int]]  # (gfn, gen) of rows no gfn needs: free them
    lost: list[int]  # frameless gfns in the paging path with no row: mark them broken
    adopt: list[int]  # leftover paging_out gfns: copy and evict them (no un-nominate)


def reconcile(types: bytes | bytearray, frames: bytes | bytearray, rows: Rows) -> Reconciled:
    """Decide recovery from hv's audit of every gfn (`types`: one p2m code per gfn;
    `frames`: the has-frame bitmap, LSB first) and the store's rows.

    A row is needed only by a frameless gfn in the paging path (`paged`,
    `paging_in_start`); a `paging_out` gfn is re-copied (its row may predate its latest
    contents), so it is adopted and its row is stale too."""
    nr = len(types)
    # Byte masks over the gfns, combined as big integers (C speed): recovery runs this
    # over 100,000s of rows and paged gfns, with no Python step per gfn but one per row.
    has_frame = int.from_bytes(unpack_bits(bytes(frames), nr), "little")
    gfns, gens = rows.gen_columns()
    top = max(nr, max(gfns, default=-1) + 1)
    # needed[gfn]: a frameless gfn whose row is its only copy (`paged`, `paging_in_start`)
    needed_int = int.from_bytes(bytes(types).translate(_NEEDED), "little") & ~has_frame
    needed = needed_int.to_bytes(top, "little")
    unneeded = list(map(operator.not_, map(needed.__getitem__, gfns)))
    stale = list(zip(compress(gfns, unneeded), compress(gens, unneeded), strict=True))
    have = bytearray(top)
    for gfn in gfns:
        have[gfn] = 1
    lost_mask = needed_int & ~int.from_bytes(have, "little")
    lost = [m.start() for m in _ONE.finditer(lost_mask.to_bytes(top, "little"))]
    adopt = [m.start() for m in _PAGING_OUT.finditer(types)]
    return Reconciled(stale, lost, adopt)


async def recover(
    *,
    nr_gfns: int,
    hv: HvCalls,
    commit: Committer,
    drops: Drops,
    policy: Policy,
    state: PagerState,
    stats: PagerStats,
    faults: Faults,
) -> None:
    """Audit hv and reconcile the store with it: free stale rows, mark lost gfns broken,
    tell the policy what is paged, queue leftover nominations for adoption."""
    t0 = trio.current_time()
    types = bytearray()
    frames = bytearray()
    for start in range(0, nr_gfns, MAX_AUDIT_COUNT):
        count = min(MAX_AUDIT_COUNT, nr_gfns - start)
        reply = await hv.audit(start, count)
        types += reply["types"]
        frames += reply["frames"][: (count + 7) // 8]
    faults.hit(CrashPoint.after_audit)
    rows = commit.store.rows
    stats.recovered_rows = len(rows)
    stale, lost, adopt = reconcile(types, frames, rows)
    await commit.free_rows(stale)
    stats.stale_freed = len(stale)
    if lost:
        await drops.mark_lost(lost, reason="no durable copy in the store")
    faults.hit(CrashPoint.after_reconcile)
    paged_out, paged = policy.paged_out, int(P2MType.paged)
    for gfn in commit.store.rows:
        if types[gfn] == paged:
            paged_out(gfn)
    for gfn in adopt:
        state.adopt[gfn] = 0.0
    stats.adopted = len(adopt)
    stats.recovery_s = trio.current_time() - t0
    log.info(
        "pager.recovered",
        rows=stats.recovered_rows,
        stale_freed=len(stale),
        lost=len(lost),
        adopt=len(adopt),
        paged=types.count(P2MType.paged),
        seconds=round(stats.recovery_s, 4),
    )


__all__ = ["Reconciled", "Rows", "reconcile", "recover"]
