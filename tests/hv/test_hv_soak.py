"""A soak over in-memory streams: guest vCPUs writing and verifying every byte, a minimal
pager paging out and in, killed and restarted now and then, balloon rounds; at the end
every page is read back and hv's invariants are checked.

The pager here is deliberately tiny (a dict for a store) so that a failure points at hv,
not at the real pager's machinery.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field

import pytest
import trio
from hv_helpers import Harness, rsp

from hv import HvConfig
from protocol import PAGE_SIZE, unpack_bits
from transport import Client

NR = 96
VCPUS = 4


def _content(gfn: int, version: int) -> bytes:
    return bytes([gfn & 0xFF, version & 0xFF]) * (PAGE_SIZE // 2)


@dataclass
class Store:
    """The pager's durable copies: survives a pager 'crash' (the connection closing)."""

    pages: dict[int, bytes] = field(default_factory=dict)
    restarts: int = 0
    page_outs: int = 0
    page_ins: int = 0


async def _serve_requests(pager: Client, store: Store, *, shield: bool = False) -> None:
    """Answer every request; with `shield`, a cancel lands only between events (a reply to
    a cancelled call would arrive with an id the client no longer knows)."""
    async for ev, fields in pager.events:
        if ev != "mem_event":
            continue
        with trio.CancelScope(shield=shield):
            await _answer(pager, store, fields["reqs"])


async def _answer(pager: Client, store: Store, reqs: list[dict]) -> None:
    for req in reqs:
        if not req["flags"] & 2:  # populate: bring the page back if it has no frame
            audit = await pager.call("audit", start=req["gfn"], count=1)
            has_frame = unpack_bits(audit["frames"], 1)[0]
            if audit["types"] in (b"\x02", b"\x03") and not has_frame:
                page = store.pages[req["gfn"]]
                (res,) = (await pager.call("prep", gfns=[req["gfn"]], pages=[page]))["results"]
                assert res == 0
                store.page_ins += 1
        (res,) = (await pager.call("resume", rsps=[rsp(req)]))["results"]
        assert res in (0, "ENOENT")  # ENOENT: answered before a crash


async def _page_out(pager: Client, store: Store, gfns: list[int]) -> None:
    res = (await pager.call("nominate", gfns=gfns))["results"]
    gfns = [g for g, r in zip(gfns, res, strict=True) if r == 0]
    await _adopt(pager, store, gfns)


async def _adopt(pager: Client, store: Store, gfns: list[int]) -> None:
    if not gfns:
        return
    pages = (await pager.call("map", gfns=gfns))["pages"]
    # ENOENT: the guest ballooned the gfn out after it was nominated (a write instead
    # keeps the frame: the copy is then stale, and the evict below fails).
    gfns = [g for g, p in zip(gfns, pages, strict=True) if isinstance(p, bytes)]
    for g, page in zip(gfns, [p for p in pages if isinstance(p, bytes)], strict=True):
        store.pages[g] = page  # "durable" before evict
    if not gfns:
        return
    res = (await pager.call("evict", gfns=gfns))["results"]
    store.page_outs += res.count(0)
    assert set(res) <= {0, "EBUSY"}  # EBUSY: the guest wrote meanwhile (EVICT_FAIL)


async def _pager_life(harness: Harness, store: Store, rng: random.Random, life: float) -> None:
    """One pager process: attach, adopt leftovers, serve and page out until it 'dies'."""
    async with harness.client("pager", hello=False) as pager:
        while True:
            reply = await pager.request("hello", _id=0, v=1, role="pager", domid=1)
            if reply["ok"]:
                break
            assert reply["err"] == "EBUSY"  # the old connection is not seen closed yet
            await trio.sleep(0.001)  # retry with backoff, as PROTOCOL.md §8 asks of a pager
        audit = await pager.call("audit", start=0, count=NR)
        await _adopt(pager, store, [g for g in range(NR) if audit["types"][g] == 1])
        with trio.move_on_after(life):
            async with trio.open_nursery() as n:
                n.start_soon(_serve_requests, pager, store)
                while True:
                    await _page_out(pager, store, rng.sample(range(NR), 6))
                    await trio.sleep(0.005)
    store.restarts += 1


async def _vcpu(guest: Client, v: int, rng: random.Random, stop: trio.Event) -> dict[int, int]:
    """Write, read back and balloon the gfns this vCPU owns (gfn % VCPUS == v)."""
    mine = list(range(v, NR, VCPUS))
    version = dict.fromkeys(mine, 0)  # 0: zero page; -1: ballooned out
    while not stop.is_set():
        g = rng.choice(mine)
        roll = rng.random()
        if roll < 0.05:
            if version[g] == -1:
                res = await guest.call("increase_reservation", gfns=[g])
                assert res["results"] == [0]
                version[g] = 0
            else:
                res = await guest.call("decrease_reservation", gfns=[g])
                if res["results"] == [0]:
                    version[g] = -1
                else:
                    assert res["results"] == ["EAGAIN"]  # ring full for the DROP_PAGE
        elif roll < 0.5 and version[g] >= 0:
            version[g] += 1
            await guest.call("write", vcpu=v, gfn=g, off=0, data=_content(g, version[g]))
        else:
            await _check(guest, v, g, version[g])
    return version


async def _check(guest: Client, v: int, g: int, version: int) -> None:
    reply = await guest.request("read", vcpu=v, gfn=g, off=0, len=PAGE_SIZE)
    if version == -1:
        assert reply["err"] == "EFAULT"
    elif version == 0:
        assert reply["data"] == bytes(PAGE_SIZE), f"gfn {g} lost its zero page"
    else:
        assert reply["data"] == _content(g, version), f"gfn {g} lost version {version}"


async def _soak(harness: Harness, seed: int, duration: float) -> Store:
    rng = random.Random(seed)
    store = Store()
    stop = trio.Event()
    versions: dict[int, int] = {}
    running = VCPUS
    all_stopped = trio.Event()
    async with harness.client("guest") as guest:

        async def vcpu(v: int) -> None:
            nonlocal running
            versions.update(await _vcpu(guest, v, random.Random(rng.random()), stop))
            running -= 1
            if not running:
                all_stopped.set()

        async with trio.open_nursery() as n:
            for v in range(VCPUS):
                n.start_soon(vcpu, v)
            with trio.move_on_after(duration):
                while True:  # pager lives of random length, killed abruptly
                    await _pager_life(harness, store, rng, rng.uniform(0.05, 0.3))
            # A last pager: serve the vCPUs until they stop, then page everything in.
            async with harness.client("pager") as pager:
                async with trio.open_nursery() as serve:
                    serve.start_soon(functools.partial(_serve_requests, shield=True), pager, store)
                    stop.set()
                    await all_stopped.wait()
                    serve.cancel_scope.cancel()
                audit = await pager.call("audit", start=0, count=NR)
                await _adopt(pager, store, [g for g in range(NR) if audit["types"][g] == 1])
                audit = await pager.call("audit", start=0, count=NR)
                paged = [g for g in range(NR) if audit["types"][g] == 2]
                res = await pager.call("prep", gfns=paged, pages=[store.pages[g] for g in paged])
                assert res["results"] == [0] * len(paged)
                await pager.call("detach")
        for g, version in versions.items():
            await _check(guest, g % VCPUS, g, version)
    assert harness.hv.check() == []
    st = harness.hv.status()["domains"][0]
    assert st["paged_pages"] == 0 and st["ring"]["used"] == 0 and st["paused_vcpus"] == []
    return store


@pytest.mark.parametrize("config", [HvConfig(nr_gfns=NR, vcpus=VCPUS, ring_size=4)])
async def test_soak_with_pager_restarts(harness: Harness) -> None:
    with trio.fail_after(30):
        store = await _soak(harness, seed=1, duration=1.0)
    assert store.restarts >= 2 and store.page_outs > 0 and store.page_ins > 0


@pytest.mark.slow
@pytest.mark.parametrize("config", [HvConfig(nr_gfns=NR, vcpus=VCPUS, ring_size=4)])
@pytest.mark.parametrize("seed", range(5))
async def test_soak_long(harness: Harness, seed: int) -> None:
    with trio.fail_after(120):
        store = await _soak(harness, seed=seed, duration=15.0)
    assert store.restarts >= 10
