"""The p2m transition rules: every operation from every p2m type, in one table.

This module is the one place to read what each operation does to a gfn (PROTOCOL.md §6-7,
DESIGN.md's state machine, the seed's comments on p2m_mem_paging_*). `hv.domain` (and its
parts `hv.domain_*`) only looks rules up here and carries out their effects; nothing else
decides a transition.

Reading the table: for an operation `op` on a gfn of type `src`, the rows for (op, src) are
tried top to bottom and the first whose guard holds wins. Its `result` is what the caller
gets (OK, an errno, or for guest accesses PAUSE / WAIT), `dst` is the new type (None: the
type does not change) and `effect` names what else happens.

Guards (evaluated by `hv.domain_state` for the gfn at hand):

    ""        always
    held      a foreign mapping holds the page (`map` with `hold`)
    frame     the gfn is backed by a frame (only ever in doubt for paging_in_start)
    no_data   `prep` has no 4096-byte page for a gfn that needs one loaded
    no_mem    the host has no free frame
    pending   an unanswered populate request names the gfn (so `prep` of `paged` is not
              a proactive page-in: the pager will `resume` it)
    no_slot   the mem_event ring has no free slot
    drop      the request being answered was a DROP_PAGE

Effects:

    free_frame      the frame goes back to the host pool
    alloc_load      a frame is allocated and the page's bytes loaded into it
    alloc_zero      a zeroed frame is allocated
    copy            the page's bytes are returned (and held with `hold`)
    read / write    the guest's bytes are read or written
    populate        a request goes on the ring (flags below); a guest vCPU pauses on it
    drop_page       DROP_PAGE request, frame freed if any, vCPUs paused on the gfn get EFAULT
    complete        the response is consumed: its ring slot is freed and, if the request
                    paused a vCPU that still waits on it, that vCPU is unpaused
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from protocol import Errno, MemEventFlag, P2MType

#: Success.
OK: Final = 0
#: A guest access pauses its vCPU on a populate request (answered after `resume`).
PAUSE: Final = "PAUSE"
#: A guest access waits for a free ring slot, then is tried again.
WAIT: Final = "WAIT"

Result = int | str  # OK, an Errno, PAUSE or WAIT

RW = P2MType.ram_rw
OUT = P2MType.paging_out
PAGED = P2MType.paged
IN_START = P2MType.paging_in_start
IN = P2MType.paging_in
INV = P2MType.invalid
MMIO = P2MType.mmio
BROKEN = P2MType.broken

E = Errno
EF = MemEventFlag.EVICT_FAIL
FG = MemEventFlag.FOREIGN

#: The operations the table covers.
OPS: Final = (
    "nominate",
    "evict",
    "prep",
    "resume",
    "mark_broken",
    "map",
    "decrease_reservation",
    "increase_reservation",
    "read",
    "write",
)


@dataclass(frozen=True, slots=True)
class Rule:
    """One row: `op` on a gfn of type `src` when `when` holds gives `result`, `dst`, `effect`."""

    op: str
    src: P2MType
    when: str
    result: Result
    dst: P2MType | None
    effect: str = ""
    flags: int = 0  # request flags for `populate` (VCPU_PAUSED is added for guest vCPUs)


def _r(op: str, srcs: tuple[P2MType, ...] | P2MType, when: str, result: Result,
       dst: P2MType | None, effect: str = "", flags: int = 0) -> list[Rule]:  # fmt: skip
    srcs = srcs if isinstance(srcs, tuple) else (srcs,)
    return [Rule(op, s, when, result, dst, effect, int(flags)) for s in srcs]


ALL = tuple(P2MType)
NOT_RW = (OUT, PAGED, IN_START, IN, INV, MMIO, BROKEN)
NOT_OUT = (RW, PAGED, IN_START, IN, INV, MMIO, BROKEN)
NOT_IN = (RW, OUT, PAGED, IN_START, INV, MMIO, BROKEN)
NOT_INV = (RW, OUT, PAGED, IN_START, IN, MMIO, BROKEN)
PAGING = (OUT, PAGED, IN_START, IN)
HOLDABLE = (OUT, IN_START, IN)  # the paging types that can have a frame to hold
FRAMED = (RW, OUT, IN, MMIO)  # always backed by a frame (paging_in_start: maybe)
UNPREP = (RW, OUT, INV, MMIO, BROKEN)
UNBREAKABLE = (RW, OUT, IN, INV, MMIO, BROKEN)

# fmt: off
TABLE: Final[tuple[Rule, ...]] = tuple(
    #  op                      src          when       result    dst       effect       flags
    # nominate (pager): only unheld ram_rw is pageable; mmio never is.
      _r("nominate",           RW,          "held",    E.EBUSY,  None)
    + _r("nominate",           RW,          "",        OK,       OUT)
    + _r("nominate",           NOT_RW,      "",        E.EBUSY,  None)
    # evict (pager): still nominated and still unheld, else the gfn stays backed.
    + _r("evict",              OUT,         "held",    E.EBUSY,  None)
    + _r("evict",              OUT,         "",        OK,       PAGED,    "free_frame")
    + _r("evict",              NOT_OUT,     "",        E.EBUSY,  None)
    # prep (pager): populated gfns move to paging_in; an unrequested paged gfn comes
    # straight back (prefetch); a gfn that kept its frame ignores the data.
    + _r("prep",               IN_START,    "frame",   OK,       IN)
    + _r("prep",               IN_START,    "no_data", E.EINVAL, None)
    + _r("prep",               IN_START,    "no_mem",  E.ENOMEM, None)
    + _r("prep",               IN_START,    "",        OK,       IN,       "alloc_load")
    + _r("prep",               PAGED,       "no_data", E.EINVAL, None)
    + _r("prep",               PAGED,       "no_mem",  E.ENOMEM, None)
    + _r("prep",               PAGED,       "pending", OK,       IN,       "alloc_load")
    + _r("prep",               PAGED,       "",        OK,       RW,       "alloc_load")
    + _r("prep",               IN,          "",        OK,       None)
    + _r("prep",               UNPREP,      "",        E.ENOENT, None)
    # resume (pager), for the gfn of the request consumed (seq and echo checked first).
    + _r("resume",             ALL,         "drop",    OK,       None,     "complete")
    + _r("resume",             IN,          "",        OK,       RW,       "complete")
    + _r("resume",             IN_START,    "frame",   OK,       RW,       "complete")
    + _r("resume",             NOT_IN,      "",        OK,       None,     "complete")
    # mark_broken (pager): only frameless gfns in the paging path can lose their contents.
    + _r("mark_broken",        PAGED,       "",        OK,       BROKEN)
    + _r("mark_broken",        IN_START,    "frame",   E.EINVAL, None)
    + _r("mark_broken",        IN_START,    "",        OK,       BROKEN)
    + _r("mark_broken",        UNBREAKABLE, "",        E.EINVAL, None)
    # map (pager, mapper): a frame is copied; a frameless gfn is ENOENT, and a paged one
    # is populated for the foreign caller (no vCPU paused) if the ring has room.
    + _r("map",                FRAMED,      "",        OK,       None,     "copy")
    + _r("map",                IN_START,    "frame",   OK,       None,     "copy")
    + _r("map",                IN_START,    "",        E.ENOENT, None)
    + _r("map",                PAGED,       "no_slot", E.ENOENT, None)
    + _r("map",                PAGED,       "",        E.ENOENT, IN_START, "populate",  FG)
    + _r("map",                (INV, BROKEN), "",      E.ENOENT, None)
    # decrease_reservation (guest balloon out).
    + _r("decrease_reservation", INV,       "",        E.ENOENT, None)
    + _r("decrease_reservation", MMIO,      "",        E.EFAULT, None)
    + _r("decrease_reservation", BROKEN,    "",        OK,       INV)
    + _r("decrease_reservation", RW,        "held",    E.EBUSY,  None)
    + _r("decrease_reservation", RW,        "",        OK,       INV,      "free_frame")
    + _r("decrease_reservation", HOLDABLE,  "held",    E.EBUSY,  None)
    + _r("decrease_reservation", PAGING,    "no_slot", E.EAGAIN, None)
    + _r("decrease_reservation", PAGING,    "",        OK,       INV,      "drop_page")
    # increase_reservation (guest balloon in).
    + _r("increase_reservation", INV,       "no_mem",  E.ENOMEM, None)
    + _r("increase_reservation", INV,       "",        OK,       RW,       "alloc_zero")
    + _r("increase_reservation", NOT_INV,   "",        E.EEXIST, None)
    # read (guest vCPU): nominated pages stay readable; the paging path pauses the vCPU.
    + _r("read",               (RW, OUT),   "",        OK,       None,     "read")
    + _r("read",               (PAGED, IN_START, IN), "no_slot", WAIT, None)
    + _r("read",               PAGED,       "",        PAUSE,    IN_START, "populate")
    + _r("read",               (IN_START, IN), "",     PAUSE,    None,     "populate")
    + _r("read",               (INV, MMIO), "",        E.EFAULT, None)
    + _r("read",               BROKEN,      "",        E.EIO,    None)
    # write (guest vCPU): a write to a nominated page fails its eviction (EVICT_FAIL).
    + _r("write",              RW,          "",        OK,       None,     "write")
    + _r("write",              PAGING,      "no_slot", WAIT,     None)
    + _r("write",              OUT,         "",        PAUSE,    IN_START, "populate",  EF)
    + _r("write",              PAGED,       "",        PAUSE,    IN_START, "populate")
    + _r("write",              (IN_START, IN), "",     PAUSE,    None,     "populate")
    + _r("write",              (INV, MMIO), "",        E.EFAULT, None)
    + _r("write",              BROKEN,      "",        E.EIO,    None)
)
# fmt: on

_BY_KEY: Final[dict[tuple[str, P2MType], tuple[Rule, ...]]] = {}
for _rule in TABLE:
    _BY_KEY[(_rule.op, _rule.src)] = (*_BY_KEY.get((_rule.op, _rule.src), ()), _rule)

GUARDS: Final = frozenset({"", "held", "frame", "no_data", "no_mem", "pending", "no_slot", "drop"})


def rules_for(op: str, src: P2MType) -> tuple[Rule, ...]:
    """The rows for `op` on a gfn of type `src`, in the order they are tried."""
    return _BY_KEY[(op, src)]


#: The rows of each op by source type code (`P2MType` codes are 0..7, dense): what
#: `rules_for` gives, without building an enum and a key per gfn.
_BY_CODE: Final[dict[str, tuple[tuple[Rule, ...], ...]]] = {
    op: tuple(_BY_KEY.get((op, t), ()) for t in sorted(P2MType, key=int)) for op in OPS
}


def rows_by_code(op: str) -> tuple[tuple[Rule, ...], ...]:
    """`rules_for(op, t)` for every type t, indexed by t's code."""
    return _BY_CODE[op]


def _unheld(rows: tuple[Rule, ...]) -> Rule | None:
    # Rows guarded by `held` lose for an unheld gfn: the first other row wins if it has no
    # guard. Any other guard first: None (only a lookup with that guard can tell).
    for rule in rows:
        if rule.when == "":
            return rule
        if rule.when != "held":
            return None
    return None  # no unguarded row: `_check_table` refuses such a table


#: Per op, by type code: the rule that applies to a gfn no foreign mapping holds, where the
#: type alone decides it (no guard but `held` comes first); None where another guard may.
_UNHELD: Final[dict[str, tuple[Rule | None, ...]]] = {
    op: tuple(_unheld(rows) for rows in by_code) for op, by_code in _BY_CODE.items()
}


def unheld_rules(op: str) -> tuple[Rule | None, ...]:
    """By type code, the rule of `op` for a gfn that is not held, when the type alone
    decides it (None: look the rule up with its guards). Batched operations use this to
    decide each gfn with one index instead of a lookup; the outcome is the lookup's."""
    return _UNHELD[op]


def lookup(op: str, src: P2MType, guard: Callable[[str], bool]) -> Rule:
    """The rule that applies: the first row for (op, src) whose guard holds.

    `guard(name)` is asked only for the guards of rows actually tried, so a costly guard
    (a scan of the ring for `pending`) is evaluated only where it matters.
    """
    for rule in _BY_KEY[(op, src)]:
        if not rule.when or guard(rule.when):
            return rule
    raise AssertionError(f"no rule for {op} from {src.name}")  # the table is total


def markdown() -> str:
    """The table as Markdown, one line per row (for docs and reviews)."""
    lines = ["| op | from | when | result | to | effect |", "|---|---|---|---|---|---|"]
    for r in TABLE:
        result = "0" if r.result == OK else str(r.result)
        dst = r.dst.name if r.dst is not None else "(same)"
        effect = r.effect + (f" ({MemEventFlag(r.flags).name})" if r.flags else "")
        lines.append(f"| {r.op} | {r.src.name} | {r.when} | {result} | {dst} | {effect} |")
    return "\n".join(lines)


def _check_table() -> None:
    """The table is total: every op from every type ends in a row with no guard."""
    for op in OPS:
        for t in P2MType:
            rows = _BY_KEY.get((op, t))
            if not rows:
                raise RuntimeError(f"no rule for {op} from {t.name}")
            if rows[-1].when != "":
                raise RuntimeError(f"{op} from {t.name} has no unconditional last row")
            if any(r.when not in GUARDS for r in rows):
                raise RuntimeError(f"unknown guard in {op} from {t.name}")


_check_table()
