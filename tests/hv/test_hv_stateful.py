"""Hypothesis stateful test: random pager ops, guest accesses, foreign maps and holds,
balloon ops and responses against a small reference model, `check()` after every step.

The model below is written from PROTOCOL.md §6-7 as plain if-chains (it does not use
`hv.rules`). hv runs in a trio loop on a helper thread so that guest accesses can pause
for real; after every step the test waits until every task is blocked, then compares
types, frames, ring, vCPU states, returned data and the invariants.

When one step wakes several vCPUs (a resume frees a slot: the unpaused vCPU retries and
the vCPUs waiting for a slot try again), trio may run them in any order; the model tries
every order and accepts the one hv took.
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hv import GuestFault, HvConfig, Hypervisor
from protocol import PAGE_SIZE, Errno, P2MType

RW, OUT, PAGED = P2MType.ram_rw, P2MType.paging_out, P2MType.paged
IN_START, IN, INV = P2MType.paging_in_start, P2MType.paging_in, P2MType.invalid
MMIO, BROKEN = P2MType.mmio, P2MType.broken
VP, DROP, EF, FG = 1, 2, 4, 8

NR, VCPUS, RING = 4, 3, 2
MMIO_GFN = 3
GFNS = st.integers(0, NR - 1)
VALUES = st.integers(1, 255)
PAGING = (OUT, PAGED, IN_START, IN)


@dataclass
class MReq:
    seq: int
    gfn: int
    vcpu: int
    flags: int


@dataclass
class MVcpu:
    state: str = "idle"  # idle, paused, waiting
    seq: int | None = None
    op: str = ""
    gfn: int = 0
    val: int = 0
    last: tuple[Any, bytes | None] | None = None  # (errno or 0, data) of the last access


@dataclass
class Model:
    """The reference: what PROTOCOL.md says each operation does."""

    types: list[P2MType] = field(default_factory=lambda: [RW] * NR)
    frame: list[bool] = field(default_factory=lambda: [True] * NR)
    content: list[int | None] = field(default_factory=lambda: [0] * NR)
    holds: list[int] = field(default_factory=lambda: [0] * NR)
    ring: dict[int, MReq] = field(default_factory=dict)
    next_seq: int = 1
    vcpus: list[MVcpu] = field(default_factory=lambda: [MVcpu() for _ in range(VCPUS)])
    free: int = 0

    def __post_init__(self) -> None:
        self.types[MMIO_GFN] = MMIO

    def put(self, gfn: int, vcpu: int, flags: int) -> MReq:
        req = MReq(self.next_seq, gfn, vcpu, flags)
        self.next_seq += 1
        self.ring[req.seq] = req
        return req

    def drop_frame(self, g: int) -> None:
        if self.frame[g]:
            self.free += 1
        self.frame[g] = False
        self.content[g] = None

    # -- pager
    def nominate(self, g: int) -> Any:
        if self.types[g] is RW and not self.holds[g]:
            self.types[g] = OUT
            return 0
        return Errno.EBUSY

    def evict(self, g: int) -> Any:
        if self.types[g] is OUT and not self.holds[g]:
            self.types[g] = PAGED
            self.drop_frame(g)
            return 0
        return Errno.EBUSY

    def prep(self, g: int, val: int | None) -> Any:
        t = self.types[g]
        if t is IN_START and self.frame[g]:
            self.types[g] = IN
            return 0
        if t in (IN_START, PAGED):
            if val is None:
                return Errno.EINVAL
            if self.free == 0:
                return Errno.ENOMEM
            pending = any(r.gfn == g and not r.flags & DROP for r in self.ring.values())
            self.types[g] = IN if t is IN_START or pending else RW
            self.frame[g], self.content[g] = True, val
            self.free -= 1
            return 0
        return 0 if t is IN else Errno.ENOENT

    def resume(self, seq: int) -> list[int]:
        """Consume `seq`; the vCPUs that must now try their access again."""
        req = self.ring.pop(seq)
        g = req.gfn
        if not req.flags & DROP and (
            self.types[g] is IN or (self.types[g] is IN_START and self.frame[g])
        ):
            self.types[g] = RW
        retry = []
        if req.flags & VP:
            v = self.vcpus[req.vcpu]
            if v.state == "paused" and v.seq == seq:
                retry.append(req.vcpu)
        return retry + [i for i, v in enumerate(self.vcpus) if v.state == "waiting"]

    def mark_broken(self, g: int) -> Any:
        if self.types[g] is PAGED or (self.types[g] is IN_START and not self.frame[g]):
            self.types[g] = BROKEN
            return 0
        return Errno.EINVAL

    def map(self, g: int, hold: bool) -> Any:
        if self.frame[g]:
            if hold:
                self.holds[g] += 1
            return self.content[g]
        if self.types[g] is PAGED and len(self.ring) < RING:
            self.put(g, -1, FG)
            self.types[g] = IN_START
        return Errno.ENOENT

    # -- guest
    def decrease(self, g: int) -> Any:
        t = self.types[g]
        if t is INV:
            return Errno.ENOENT
        if t is MMIO:
            return Errno.EFAULT
        if t is BROKEN:
            self.types[g] = INV
            return 0
        if self.holds[g]:
            return Errno.EBUSY
        if t in PAGING:
            if len(self.ring) >= RING:
                return Errno.EAGAIN
            self.put(g, -1, DROP)
            for v in self.vcpus:
                # A paused vCPU always has a seq on the ring.
                if v.state == "paused" and self.ring[v.seq].gfn == g:  # type: ignore[index]
                    self.finish(v, Errno.EFAULT)
        self.types[g] = INV
        self.drop_frame(g)
        return 0

    def increase(self, g: int) -> Any:
        if self.types[g] is not INV:
            return Errno.EEXIST
        if self.free == 0:
            return Errno.ENOMEM
        self.types[g], self.frame[g], self.content[g] = RW, True, 0
        self.free -= 1
        return 0

    def finish(self, v: MVcpu, errno: Any, data: bytes | None = None) -> None:
        v.state, v.seq, v.last = "idle", None, (errno, data)

    def attempt(self, i: int) -> None:
        """vCPU i tries its access (again)."""
        v = self.vcpus[i]
        g, t = v.gfn, self.types[v.gfn]
        if t in (INV, MMIO):
            self.finish(v, Errno.EFAULT)
        elif t is BROKEN:
            self.finish(v, Errno.EIO)
        elif v.op == "read" and t in (RW, OUT):
            self.finish(v, 0, bytes([self.content[g] or 0]) * 8)
        elif v.op == "write" and t is RW:
            self.content[g] = v.val
            self.finish(v, 0)
        elif len(self.ring) >= RING:
            v.state, v.seq = "waiting", None
        else:
            req = self.put(g, i, VP | (EF if t is OUT else 0))
            if t in (OUT, PAGED):
                self.types[g] = IN_START
            v.state, v.seq = "paused", req.seq


class _TrioThread:
    """A trio loop on a helper thread: the test thread calls into it and waits."""

    def __init__(self) -> None:
        self._started = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        assert self._started.wait(10)

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._started.set()
            await trio.sleep_forever()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn in the loop, then wait until every task there is blocked."""

        async def go() -> Any:
            result = fn(*args)
            await trio.testing.wait_all_tasks_blocked()
            return result

        return trio.from_thread.run(go, trio_token=self.token)

    def close(self) -> None:
        trio.from_thread.run_sync(self.nursery.cancel_scope.cancel, trio_token=self.token)
        self._thread.join(10)


def _page(val: int) -> bytes:
    return bytes([val]) * 8 + bytes(PAGE_SIZE - 8)


class PagingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.hv = Hypervisor(
            HvConfig(nr_gfns=NR, vcpus=VCPUS, ring_size=RING, mmio_gfns=(MMIO_GFN,))
        )
        self.d = self.hv.domains[1]
        self.model = Model(free=self.hv.pool.free)
        self.loop = _TrioThread()
        self.acc: dict[int, dict[str, Any]] = {}
        self.holder: dict[int, int] = {}

    def teardown(self) -> None:
        self.loop.close()
        self.hv.close()

    # ---------------------------------------------------------------- pager rules

    @rule(g=GFNS)
    def nominate(self, g: int) -> None:
        assert self.loop.call(self.d.nominate, [g]) == [self.model.nominate(g)]

    @rule(g=GFNS)
    def evict(self, g: int) -> None:
        assert self.loop.call(self.d.evict, [g]) == [self.model.evict(g)]

    @rule(g=GFNS, val=st.none() | VALUES)
    def prep(self, g: int, val: int | None) -> None:
        page = None if val is None else _page(val)
        assert self.loop.call(self.d.prep, [g], [page]) == [self.model.prep(g, val)]

    @rule(g=GFNS)
    def mark_broken(self, g: int) -> None:
        assert self.loop.call(self.d.mark_broken, [g]) == [self.model.mark_broken(g)]

    @rule(g=GFNS, hold=st.booleans())
    def map(self, g: int, hold: bool) -> None:
        (got,) = self.loop.call(lambda: self.d.map([g], hold=hold, holder=self.holder))
        want = self.model.map(g, hold)
        if isinstance(got, bytes):
            assert got[:8] == bytes([want]) * 8 and got[8:] == bytes(PAGE_SIZE - 8)
        else:
            assert got == want

    @precondition(lambda self: any(self.model.holds))
    @rule(data=st.data())
    def unmap(self, data: st.DataObject) -> None:
        g = data.draw(st.sampled_from([g for g in range(NR) if self.model.holds[g]]))
        assert self.loop.call(self.d.unmap, [g], self.holder) == [0]
        self.model.holds[g] -= 1

    @precondition(lambda self: self.model.ring)
    @rule(data=st.data(), tamper=st.sampled_from(["", "", "", "gfn", "vcpu_id"]))
    def resume(self, data: st.DataObject, tamper: str) -> None:
        req = data.draw(st.sampled_from(list(self.model.ring.values())))
        rsp = {"seq": req.seq, "gfn": req.gfn, "vcpu_id": req.vcpu, "flags": req.flags}
        if tamper:
            rsp[tamper] += 1
            assert self.loop.call(self.d.resume, [rsp]) == [Errno.EINVAL]
            return
        assert self.loop.call(self.d.resume, [rsp]) == [0]
        contenders = self.model.resume(req.seq)
        self._settle(contenders)

    @rule(seq=st.integers(0, 3))
    def resume_unknown(self, seq: int) -> None:
        seq += self.model.next_seq  # never put yet
        rsp = {"seq": seq, "gfn": 0, "vcpu_id": -1, "flags": 0}
        assert self.loop.call(self.d.resume, [rsp]) == [Errno.ENOENT]

    # ---------------------------------------------------------------- guest rules

    @rule(g=GFNS)
    def decrease(self, g: int) -> None:
        assert self.loop.call(self.d.decrease_reservation, [g]) == [self.model.decrease(g)]

    @rule(g=GFNS)
    def increase(self, g: int) -> None:
        assert self.loop.call(self.d.increase_reservation, [g]) == [self.model.increase(g)]

    @rule(v=st.integers(0, VCPUS - 1), op=st.sampled_from(["read", "write"]), g=GFNS, val=VALUES)
    def access(self, v: int, op: str, g: int, val: int) -> None:
        mv = self.model.vcpus[v]
        got = self.loop.call(self._start, v, op, g, val)
        if mv.state != "idle":
            assert got is Errno.EBUSY
            return
        assert got is None
        mv.op, mv.gfn, mv.val = op, g, val
        self.model.attempt(v)

    def _start(self, v: int, op: str, g: int, val: int) -> Errno | None:
        err = self.d.claim_vcpu(v)
        if err is not None:
            return err
        rec: dict[str, Any] = {"done": False}
        self.acc[v] = rec

        async def run() -> None:
            try:
                data = await self.d.access(v, op, g, 0, 8, bytes([val]) * 8)
                rec["last"] = (0, data)
            except GuestFault as fault:
                rec["last"] = (fault.errno, None)
            rec["done"] = True

        self.loop.nursery.start_soon(run)
        return None

    # ---------------------------------------------------------------- comparison

    def _settle(self, contenders: list[int]) -> None:
        """Let the woken vCPUs try again in the order hv took (one of them)."""
        if not contenders:
            return
        actual = self._hv_view()
        tried = []
        for order in itertools.permutations(contenders):
            m = copy.deepcopy(self.model)
            for i in order:
                m.attempt(i)
            if self._model_view(m) == actual:
                self.model = m
                return
            tried.append(self._model_view(m))
        raise AssertionError(f"no order of {contenders} matches hv: {actual} vs {tried}")

    def _hv_view(self) -> Any:
        d = self.d
        ring = [(r.seq, r.gfn, r.vcpu_id, r.flags) for r in d.ring.unanswered()]
        vcpus = []
        for i, v in enumerate(d.vcpus):
            if v.paused_seq is not None:
                vcpus.append(("paused", v.paused_seq, None))
            elif v.waiting:
                vcpus.append(("waiting", None, None))
            else:
                assert not v.busy
                vcpus.append(("idle", None, self.acc.get(i, {}).get("last")))
        return (list(d.p2m.types), ring, vcpus)

    @staticmethod
    def _model_view(m: Model) -> Any:
        ring = [(r.seq, r.gfn, r.vcpu, r.flags) for r in m.ring.values()]
        vcpus = [(v.state, v.seq, v.last if v.state == "idle" else None) for v in m.vcpus]
        return ([int(t) for t in m.types], ring, vcpus)

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.loop.call(self.hv.check) == []
        assert self._hv_view() == self._model_view(self.model)
        p2m = self.d.p2m
        assert [p2m.has_frame(g) for g in range(NR)] == self.model.frame
        assert self.hv.pool.free == self.model.free
        assert {g: n for g, n in enumerate(self.model.holds) if n} == p2m.holds
        for g in range(NR):
            if self.model.frame[g]:
                assert self.hv.pool.read(p2m.frames[g], 0, 8) == bytes([self.model.content[g]]) * 8


PagingMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None, print_blob=True
)
test_paging_machine = PagingMachine.TestCase


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_paging_machine_long() -> None:
    """The same with many more examples and longer runs (XPEMU_SLOW=1)."""
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        PagingMachine, settings=settings(max_examples=1000, stateful_step_count=80, deadline=None)
    )
