"""Recovery: audit hv, reconcile the store's rows with it (pure), free, mark lost, adopt.

`reconcile` decides, from nothing but hv's audit and the store's rows; `recover` carries
the decision out (DESIGN.md "Recovery").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
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

_FRAMELESS_TYPES = re.compile(b"[\x01\x02\x03]")  # paging_out, paged, paging_in_start


class Rows(Protocol):
    """What `reconcile` reads of the store's rows."""

    def gens(self) -> Iterator[tuple[int, int]]:
        """(gfn, gen) of every row."""
        ...

    def __contains__(self, gfn: object) -> bool: ...


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
    # One byte per gfn and the type codes as plain ints: these loops run once per row
    # and once per frameless gfn (100,000s at a restart), so no call or enum lookup each.
    has_frame = unpack_bits(bytes(frames), nr)
    needed = (int(P2MType.paged), int(P2MType.paging_in_start))
    paging_out = int(P2MType.paging_out)
    stale = [
        (gfn, gen)
        for gfn, gen in rows.gens()
        if gfn >= nr or has_frame[gfn] or types[gfn] not in needed
    ]
    lost: list[int] = []
    adopt: list[int] = []
    for m in _FRAMELESS_TYPES.finditer(types):
        gfn = m.start()
        if types[gfn] == paging_out:
            adopt.append(gfn)
        elif not has_frame[gfn] and gfn not in rows:
            lost.append(gfn)
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
