"""A test per row of the transition table: every op from every p2m type.

The expectations below are written out again from PROTOCOL.md §6-7 rather than read from
`hv.rules`, and each state is reached through real operations (nominate, evict, guest
writes, balloon, foreign maps), so a wrong row or a wrong effect fails here. The first test
makes sure every row of the table has an expectation and the other way round.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from hv import TABLE, Domain, GuestFault, HvConfig, Hypervisor
from hv.rules import PAUSE, WAIT, markdown
from protocol import Errno, MemEventFlag, P2MType

RW, OUT, PAGED = P2MType.ram_rw, P2MType.paging_out, P2MType.paged
IN_START, IN, INV = P2MType.paging_in_start, P2MType.paging_in, P2MType.invalid
MMIO, BROKEN = P2MType.mmio, P2MType.broken
ALL = tuple(P2MType)
OK = 0
SAME = None  # the type does not change

G = 3  # the gfn under test
MMIO_GFN = 15
FILLERS = (8, 9, 10, 11)  # gfns used to fill the ring
PAGE = bytes(range(256)) * 16


def _rows(op: str, srcs: tuple[P2MType, ...], when: str, result: Any, dst: Any) -> dict:
    return {(op, s, when): (result, dst) for s in srcs}


# (op, src, guard) -> (result, resulting type or SAME), straight from PROTOCOL.md.
EXPECT: dict[tuple[str, P2MType, str], tuple[Any, P2MType | None]] = {
    **_rows("nominate", (RW,), "held", Errno.EBUSY, SAME),
    **_rows("nominate", (RW,), "", OK, OUT),
    **_rows("nominate", (OUT, PAGED, IN_START, IN, INV, MMIO, BROKEN), "", Errno.EBUSY, SAME),
    **_rows("evict", (OUT,), "held", Errno.EBUSY, SAME),
    **_rows("evict", (OUT,), "", OK, PAGED),
    **_rows("evict", (RW, PAGED, IN_START, IN, INV, MMIO, BROKEN), "", Errno.EBUSY, SAME),
    **_rows("prep", (IN_START,), "frame", OK, IN),
    **_rows("prep", (IN_START,), "no_data", Errno.EINVAL, SAME),
    **_rows("prep", (IN_START,), "no_mem", Errno.ENOMEM, SAME),
    **_rows("prep", (IN_START,), "", OK, IN),
    **_rows("prep", (PAGED,), "no_data", Errno.EINVAL, SAME),
    **_rows("prep", (PAGED,), "no_mem", Errno.ENOMEM, SAME),
    **_rows("prep", (PAGED,), "pending", OK, IN),
    **_rows("prep", (PAGED,), "", OK, RW),
    **_rows("prep", (IN,), "", OK, SAME),
    **_rows("prep", (RW, OUT, INV, MMIO, BROKEN), "", Errno.ENOENT, SAME),
    **_rows("resume", ALL, "drop", OK, SAME),
    **_rows("resume", (IN,), "", OK, RW),
    **_rows("resume", (IN_START,), "frame", OK, RW),
    **_rows("resume", (RW, OUT, PAGED, IN_START, INV, MMIO, BROKEN), "", OK, SAME),
    **_rows("mark_broken", (PAGED,), "", OK, BROKEN),
    **_rows("mark_broken", (IN_START,), "frame", Errno.EINVAL, SAME),
    **_rows("mark_broken", (IN_START,), "", OK, BROKEN),
    **_rows("mark_broken", (RW, OUT, IN, INV, MMIO, BROKEN), "", Errno.EINVAL, SAME),
    **_rows("map", (RW, OUT, IN, MMIO), "", OK, SAME),
    **_rows("map", (IN_START,), "frame", OK, SAME),
    **_rows("map", (IN_START,), "", Errno.ENOENT, SAME),
    **_rows("map", (PAGED,), "no_slot", Errno.ENOENT, SAME),
    **_rows("map", (PAGED,), "", Errno.ENOENT, IN_START),
    **_rows("map", (INV, BROKEN), "", Errno.ENOENT, SAME),
    **_rows("decrease_reservation", (INV,), "", Errno.ENOENT, SAME),
    **_rows("decrease_reservation", (MMIO,), "", Errno.EFAULT, SAME),
    **_rows("decrease_reservation", (BROKEN,), "", OK, INV),
    **_rows("decrease_reservation", (RW,), "held", Errno.EBUSY, SAME),
    **_rows("decrease_reservation", (RW,), "", OK, INV),
    **_rows("decrease_reservation", (OUT, IN_START, IN), "held", Errno.EBUSY, SAME),
    **_rows("decrease_reservation", (OUT, PAGED, IN_START, IN), "no_slot", Errno.EAGAIN, SAME),
    **_rows("decrease_reservation", (OUT, PAGED, IN_START, IN), "", OK, INV),
    **_rows("increase_reservation", (INV,), "no_mem", Errno.ENOMEM, SAME),
    **_rows("increase_reservation", (INV,), "", OK, RW),
    **_rows(
        "increase_reservation", (RW, OUT, PAGED, IN_START, IN, MMIO, BROKEN), "", Errno.EEXIST, SAME
    ),
    **_rows("read", (RW, OUT), "", OK, SAME),
    **_rows("read", (PAGED, IN_START, IN), "no_slot", WAIT, SAME),
    **_rows("read", (PAGED,), "", PAUSE, IN_START),
    **_rows("read", (IN_START, IN), "", PAUSE, SAME),
    **_rows("read", (INV, MMIO), "", Errno.EFAULT, SAME),
    **_rows("read", (BROKEN,), "", Errno.EIO, SAME),
    **_rows("write", (RW,), "", OK, SAME),
    **_rows("write", (OUT, PAGED, IN_START, IN), "no_slot", WAIT, SAME),
    **_rows("write", (OUT,), "", PAUSE, IN_START),
    **_rows("write", (PAGED,), "", PAUSE, IN_START),
    **_rows("write", (IN_START, IN), "", PAUSE, SAME),
    **_rows("write", (INV, MMIO), "", Errno.EFAULT, SAME),
    **_rows("write", (BROKEN,), "", Errno.EIO, SAME),
}


def test_every_row_has_an_expectation() -> None:
    rows = [(r.op, r.src, r.when) for r in TABLE]
    assert len(rows) == len(set(rows)), "a row is listed twice"
    assert set(rows) == set(EXPECT)


def test_markdown_lists_every_row() -> None:
    lines = markdown().splitlines()
    assert len(lines) == 2 + len(TABLE)
    assert "| write | paging_out |  | PAUSE | paging_in_start | populate (EVICT_FAIL) |" in lines


class Ctx:
    """A fresh small domain and a nursery for guest accesses that pause."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.hv = Hypervisor(HvConfig(nr_gfns=16, vcpus=4, ring_size=4, mmio_gfns=(MMIO_GFN,)))
        self.d: Domain = self.hv.domains[1]
        self.nursery = nursery
        self.next_vcpu = 0
        self.accesses: list[dict[str, Any]] = []

    def type(self, gfn: int = G) -> P2MType:
        return self.d.p2m.type(gfn)

    async def guest(self, op: str, gfn: int = G) -> dict[str, Any]:
        """Start a guest access on a fresh vCPU; return its state once everything blocks."""
        vcpu = self.next_vcpu
        self.next_vcpu += 1
        assert self.d.claim_vcpu(vcpu) is None
        state: dict[str, Any] = {"vcpu": vcpu, "done": False}

        async def run() -> None:
            try:
                data = b"\xab" * 8 if op == "write" else None
                state["result"] = await self.d.access(vcpu, op, gfn, 0, 8, data)
                state["errno"] = OK
            except GuestFault as f:
                state["errno"] = f.errno
            state["done"] = True

        self.nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        self.accesses.append(state)
        return state

    # ---- ways to reach each type (through real operations only)

    def paged(self, gfn: int = G) -> None:
        assert self.d.nominate([gfn]) == [OK]
        assert self.d.evict([gfn]) == [OK]

    def foreign_populate(self, gfn: int = G) -> None:
        """paged -> paging_in_start without a frame, by a foreign map (FOREIGN request)."""
        self.paged(gfn)
        assert self.d.map([gfn], hold=False, holder={}) == [Errno.ENOENT]
        assert self.type(gfn) is IN_START

    async def reach(self, src: P2MType, *, frame: bool = False) -> int:
        """Bring G (or the mmio gfn) to `src`; returns the gfn."""
        d = self.d
        match src:
            case P2MType.ram_rw:
                pass
            case P2MType.paging_out:
                assert d.nominate([G]) == [OK]
            case P2MType.paged:
                self.paged()
            case P2MType.paging_in_start if frame:
                assert d.nominate([G]) == [OK]
                state = await self.guest("write")  # EVICT_FAIL: the frame stays
                assert not state["done"]
            case P2MType.paging_in_start:
                self.foreign_populate()
            case P2MType.paging_in:
                self.foreign_populate()
                assert d.prep([G], [PAGE]) == [OK]
            case P2MType.invalid:
                assert d.decrease_reservation([G]) == [OK]
            case P2MType.mmio:
                return MMIO_GFN
            case P2MType.broken:
                self.paged()
                assert d.mark_broken([G]) == [OK]
        assert self.type() is src
        assert d.p2m.has_frame(G) == (src in (RW, OUT, IN) or frame)
        return G

    def fill_ring(self) -> None:
        for g in FILLERS[: self.d.ring.size - self.d.ring.used]:
            self.foreign_populate(g)
        assert self.d.ring.full

    def drain_pool(self) -> list[int]:
        frames = []
        while (f := self.hv.pool.alloc()) is not None:
            frames.append(f)
        return frames

    async def request_then(self, src: P2MType, *, drop: bool, frame: bool) -> tuple[int, Any]:
        """An unanswered request naming G, with G then brought to `src` (for `resume`)."""
        d = self.d
        if src is MMIO:  # no path puts a request for an mmio gfn: place one by hand
            req = d.ring.put(MMIO_GFN, -1, MemEventFlag.DROP_PAGE if drop else 8, MMIO)
            return MMIO_GFN, req
        if drop:
            assert d.nominate([G]) == [OK]
            assert d.decrease_reservation([G]) == [OK]  # DROP_PAGE request, G invalid
            (req,) = d.ring.unanswered()
            assert req.drop
            if src is not INV:
                assert d.increase_reservation([G]) == [OK]
                if src is not RW:
                    await self.reach(src, frame=frame)
            return G, req
        if src is IN_START and frame:
            await self.reach(IN_START, frame=True)
            (req,) = d.ring.unanswered()
            return G, req
        self.foreign_populate()  # FOREIGN request, G frameless paging_in_start
        (req,) = d.ring.unanswered()
        match src:
            case P2MType.paging_in_start:
                pass
            case P2MType.paging_in:
                assert d.prep([G], [PAGE]) == [OK]
            case P2MType.broken:
                assert d.mark_broken([G]) == [OK]
            case P2MType.ram_rw:
                assert d.prep([G], [PAGE]) == [OK]
                state = await self.guest("read")  # a second request; resuming it -> ram_rw
                (_, second) = d.ring.unanswered()
                assert d.resume([_rsp(second)]) == [OK]
                await trio.testing.wait_all_tasks_blocked()
                assert state["done"] and state["errno"] == OK
            case _:  # out, paged, invalid: the gfn ballooned out and back in meanwhile
                assert d.decrease_reservation([G]) == [OK]
                if src is not INV:
                    assert d.increase_reservation([G]) == [OK]
                    await self.reach(src)
        return G, req


def _rsp(req: Any) -> dict[str, int]:
    return {"seq": req.seq, "gfn": req.gfn, "vcpu_id": req.vcpu_id, "flags": req.flags}


async def _run_row(ctx: Ctx, op: str, src: P2MType, when: str) -> tuple[Any, int]:
    """Set up `src` with `when` holding, run `op` on it; (result, gfn)."""
    d = ctx.d
    if op == "resume":
        gfn, req = await ctx.request_then(src, drop=when == "drop", frame=when == "frame")
        (res,) = d.resume([_rsp(req)])
        assert d.ring.get(req.seq) is None, "the slot is freed"
        return res, gfn
    if op == "prep" and src is PAGED and when == "pending":
        # A populate request left over from before the gfn ballooned out and back in.
        await ctx.reach(IN_START, frame=True)
        assert d.decrease_reservation([G]) == [OK]
        assert d.increase_reservation([G]) == [OK]
        ctx.paged()
        assert d.ring.populating(G)
        gfn = G
    else:
        # Only a gfn with a frame can be held: a held paging_in_start kept its frame.
        gfn = await ctx.reach(src, frame=when == "frame" or (when == "held" and src is IN_START))
    holder: dict[int, int] = {}
    if when == "held":
        assert isinstance(d.map([gfn], hold=True, holder=holder)[0], bytes)
    if when == "no_slot":
        ctx.fill_ring()
    stash = ctx.drain_pool() if when == "no_mem" else []
    try:
        match op:
            case "read" | "write":
                state = await ctx.guest(op, gfn)
                vcpu = d.vcpus[state["vcpu"]]
                if state["done"]:
                    res = state["errno"]
                elif vcpu.waiting:
                    res = WAIT
                else:
                    assert vcpu.paused_seq is not None
                    res = PAUSE
            case "prep":
                (res,) = d.prep([gfn], [None if when == "no_data" else PAGE])
            case "map":
                (res,) = d.map([gfn], hold=False, holder={})
                if isinstance(res, bytes):
                    res = OK
            case _:
                (res,) = getattr(d, op)([gfn])
    finally:
        for f in stash:
            ctx.hv.pool.release(f)
    d.release_holds(holder)
    return res, gfn


@pytest.mark.parametrize(
    ("op", "src", "when"),
    sorted(EXPECT, key=lambda k: (k[0], int(k[1]), k[2])),
    ids=lambda v: v.name if isinstance(v, P2MType) else (v or "-"),
)
async def test_row(op: str, src: P2MType, when: str) -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            ctx = Ctx(nursery)
            result, dst = EXPECT[(op, src, when)]
            res, gfn = await _run_row(ctx, op, src, when)
            assert res == result
            assert ctx.type(gfn) is (src if dst is SAME else dst)
            assert ctx.hv.check() == []
            nursery.cancel_scope.cancel()
