"""Hello, attachment, vCPUs, balloon, holds and control ops, over in-memory streams."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Awaitable

import pytest
import trio
import trio.testing
from hv_helpers import Harness, next_event, page, page_out, rsp, spawn

from hv import HvConfig
from hv.config import MAX_DOMAINS
from protocol import PAGE_SIZE, MemEventFlag, OpError, encode_frame, unpack_bits
from transport import ConnectionClosed


async def _errno(coro: Awaitable[object]) -> str:
    with pytest.raises(OpError) as exc:
        await coro
    return str(exc.value.errno)


async def test_hello_rules(harness: Harness) -> None:
    with trio.fail_after(10):
        async with harness.client("pager", hello=False) as c:
            assert await _errno(c.hello(9)) == "ESRCH"
            info = await c.hello(1)  # the connection stayed open after ESRCH
            assert info["epoch"] == 1 and info["ring_size"] == 8 and info["page_size"] == 4096
            assert await _errno(c.hello(1)) == "EINVAL"  # a second hello
            async with harness.client("pager", hello=False) as second:
                assert await _errno(second.hello(1)) == "EBUSY"
        async with harness.client("guest", hello=False) as g:
            assert await _errno(g.call("hello", _id=0, v=1, role="guest")) == "EINVAL"
            info = await g.hello(1)
            assert info.get("epoch") is None
        async with harness.client("control", None) as c:
            assert c.info["domid"] is None


@pytest.mark.parametrize(("role", "socket"), [("guest", "privcmd.sock"), ("pager", "guest.sock")])
async def test_role_not_allowed_on_socket_closes(harness: Harness, role: str, socket: str) -> None:
    with trio.fail_after(10):
        async with harness.client(role, socket=socket, hello=False) as c:
            assert await _errno(c.hello(1)) == "EPERM"
            with pytest.raises(ConnectionClosed):
                await c.request("hello", v=1, role=role, domid=1)


async def test_takeover_fences_the_old_pager(harness: Harness) -> None:
    with trio.fail_after(10):
        async with harness.client("pager") as old, harness.client("guest") as guest:
            await page_out(old, [2])
            async with trio.open_nursery() as n:
                access = spawn(n, guest, "read", vcpu=0, gfn=2, off=0, len=1)
                (req,) = (await next_event(old, "mem_event"))["reqs"]
                async with harness.client("pager", takeover=True) as new:
                    assert new.info["epoch"] == 2
                    assert (await next_event(new, "mem_event"))["reqs"] == [req]
                    with pytest.raises(ConnectionClosed):
                        await old.call("nominate", gfns=[3])
                    await new.call("prep", gfns=[2], pages=[page(2)])
                    await new.call("resume", rsps=[rsp(req)])
                    await access.done.wait()
                    assert access.reply["data"] == b"\x02"
        harness.check()


async def test_detach(harness: Harness) -> None:
    with trio.fail_after(10):
        async with harness.client("pager") as pager:
            await page_out(pager, [1])
            assert await _errno(pager.call("detach")) == "EBUSY"  # paged_pages > 0
            await pager.call("prep", gfns=[1], pages=[page(1)])
            await pager.call("detach")
            assert await _errno(pager.call("nominate", gfns=[2])) == "ENODEV"
            assert await _errno(pager.call("detach")) == "ENODEV"
            async with harness.client("pager") as nxt:  # no EBUSY: the ring was detached
                assert nxt.info["epoch"] == 2
                async with harness.client("control", None) as control:
                    # A live pager is not detached from outside (takeover is for that).
                    assert await _errno(control.call("detach", domid=1)) == "EBUSY"
                    assert await _errno(control.call("detach", domid=7)) == "ESRCH"


async def test_vcpu_one_access_at_a_time_and_out_of_order_replies(harness: Harness) -> None:
    with trio.fail_after(10):
        async with (
            harness.client("pager") as pager,
            harness.client("guest") as guest,
            trio.open_nursery() as n,
        ):
            await page_out(pager, [9])
            slow = spawn(n, guest, "read", vcpu=0, gfn=9, off=0, len=1)
            (req,) = (await next_event(pager, "mem_event"))["reqs"]
            assert await _errno(guest.call("read", vcpu=0, gfn=1, off=0, len=1)) == "EBUSY"
            assert await _errno(guest.call("read", vcpu=4, gfn=1, off=0, len=1)) == "EINVAL"
            assert await _errno(guest.call("read", vcpu=1, gfn=64, off=0, len=1)) == "EINVAL"
            # vCPU 1 is served while vCPU 0 is paused: its reply overtakes vCPU 0's.
            assert (await guest.call("read", vcpu=1, gfn=1, off=0, len=1))["data"] == b"\x00"
            assert not slow.done.is_set()
            await pager.call("prep", gfns=[9], pages=[page(9)])
            await pager.call("resume", rsps=[rsp(req)])
            await slow.done.wait()
            assert slow.reply["data"] == b"\x09"


async def test_balloon_out_releases_paused_vcpus(harness: Harness) -> None:
    with trio.fail_after(10):
        async with (
            harness.client("pager") as pager,
            harness.client("guest") as guest,
            trio.open_nursery() as n,
        ):
            await page_out(pager, [6])
            access = spawn(n, guest, "write", vcpu=0, gfn=6, off=0, data=b"z")
            (req,) = (await next_event(pager, "mem_event"))["reqs"]
            res = await guest.call("decrease_reservation", gfns=[6, 6, 60])
            assert res["results"] == [0, "ENOENT", 0]
            (drop,) = (await next_event(pager, "mem_event"))["reqs"]
            assert drop == {
                "seq": req["seq"] + 1,
                "gfn": 6,
                "vcpu_id": -1,
                "flags": MemEventFlag.DROP_PAGE,
                "p2mt": "paging_in_start",
            }
            await access.done.wait()
            assert access.reply["err"] == "EFAULT"
            audit = await pager.call("audit", start=0, count=64)
            assert audit["types"][6] == 5 and audit["types"][60] == 5
            assert audit["paged_pages"] == 0 and audit["tot_pages"] == 62
            # Both requests stay until answered; answering them unpauses nothing.
            st = (await _status(harness))["domains"][0]
            assert st["ring"]["used"] == 2 and st["paused_vcpus"] == []
            assert (await pager.call("resume", rsps=[rsp(req), rsp(drop)]))["results"] == [0, 0]
            # Balloon in: a zeroed frame.
            res = await guest.call("increase_reservation", gfns=[6, 6, 60])
            assert res["results"] == [0, "EEXIST", 0]
            data = (await guest.call("read", vcpu=0, gfn=6, off=0, len=PAGE_SIZE))["data"]
            assert data == bytes(PAGE_SIZE)
        harness.check()


async def _status(harness: Harness) -> dict:
    async with harness.client("control", None) as control:
        return await control.call("status")


@pytest.mark.parametrize("config", [HvConfig(nr_gfns=8, vcpus=1, host_frames=8)])
async def test_frames_are_zeroed_on_reuse_and_enomem(harness: Harness) -> None:
    with trio.fail_after(10):
        async with (
            harness.client("pager") as pager,
            harness.client("guest") as guest,
            harness.client("control", None) as control,
        ):
            assert (await guest.call("decrease_reservation", gfns=[1]))["results"] == [0]
            await guest.call("write", vcpu=0, gfn=0, off=0, data=b"\xff" * PAGE_SIZE)
            await page_out(pager, [0])  # gfn 0's dirty frame is freed last: reused first
            assert (await guest.call("increase_reservation", gfns=[1]))["results"] == [0]
            got = (await guest.call("read", vcpu=0, gfn=1, off=0, len=PAGE_SIZE))["data"]
            assert got == bytes(PAGE_SIZE)
            await page_out(pager, [2, 3])
            # Another domain takes the host's free frames but one: page-ins run short.
            d2 = (await control.call("domain_create", nr_gfns=2, vcpus=1))["domid"]
            res = await pager.call("prep", gfns=[0, 2, 3], pages=[page(1)] * 3)
            assert res["results"] == [0, "ENOMEM", "ENOMEM"]
            assert (await guest.call("decrease_reservation", gfns=[5]))["results"] == [0]
            await control.call("domain_create", nr_gfns=1, vcpus=1)
            assert (await guest.call("increase_reservation", gfns=[5]))["results"] == ["ENOMEM"]
            await control.call("domain_destroy", domid=d2)
            res = await pager.call("prep", gfns=[2, 3], pages=[page(2), page(3)])
            assert res["results"] == [0, 0]
            assert (await guest.call("read", vcpu=0, gfn=3, off=7, len=1))["data"] == b"\x03"
        harness.check()


async def test_holds(harness: Harness) -> None:
    with trio.fail_after(10):
        async with harness.client("pager") as pager:
            async with harness.client("mapper") as mapper:
                pages = (await mapper.call("map", gfns=[3, 3, 64], hold=True))["pages"]
                assert pages[:2] == [bytes(PAGE_SIZE)] * 2 and pages[2] == "EINVAL"
                assert (await pager.call("nominate", gfns=[3]))["results"] == ["EBUSY"]
                assert (await mapper.call("unmap", gfns=[3, 4]))["results"] == [0, "ENOENT"]
                assert (await pager.call("nominate", gfns=[3]))["results"] == ["EBUSY"]
                await mapper.call("map", gfns=[3, 5], hold=True)
                assert (await pager.call("nominate", gfns=[5]))["results"] == ["EBUSY"]
                await mapper.call("unmap", gfns=[5])
                assert (await pager.call("nominate", gfns=[5]))["results"] == [0]
                await mapper.call("map", gfns=[5], hold=True)
                assert (await pager.call("evict", gfns=[5]))["results"] == ["EBUSY"]
            # The mapper's connection closed: its holds went with it, once hv has read the
            # end of the stream (a socket's end arrives like data: wait until it is served).
            await trio.testing.wait_all_tasks_blocked()
            assert (await pager.call("evict", gfns=[5]))["results"] == [0]
            assert (await pager.call("nominate", gfns=[3]))["results"] == [0]
        harness.check()


async def test_mark_broken_gives_eio(harness: Harness) -> None:
    with trio.fail_after(10):
        async with (
            harness.client("pager") as pager,
            harness.client("guest") as guest,
            trio.open_nursery() as n,
        ):
            await page_out(pager, [4, 5])
            access = spawn(n, guest, "read", vcpu=0, gfn=4, off=0, len=1)
            (req,) = (await next_event(pager, "mem_event"))["reqs"]
            res = await pager.call("mark_broken", gfns=[4, 5, 6])
            assert res["results"] == [0, 0, "EINVAL"]
            assert (await pager.call("audit", start=0, count=0))["paged_pages"] == 0
            assert not access.done.is_set()  # still needs its answer
            await pager.call("resume", rsps=[rsp(req)])
            await access.done.wait()
            assert access.reply["err"] == "EIO"
            assert await _errno(guest.call("write", vcpu=1, gfn=5, off=0, data=b"a")) == "EIO"
            # Ballooning a broken gfn out and in gives the guest a fresh zero page.
            assert (await guest.call("decrease_reservation", gfns=[5]))["results"] == [0]
            assert (await guest.call("increase_reservation", gfns=[5]))["results"] == [0]
            assert (await guest.call("read", vcpu=1, gfn=5, off=9, len=1))["data"] == b"\x00"
        harness.check()


async def test_resume_checks_the_echo(harness: Harness) -> None:
    with trio.fail_after(10):
        async with (
            harness.client("pager") as pager,
            harness.client("guest") as guest,
            trio.open_nursery() as n,
        ):
            await page_out(pager, [8])
            access = spawn(n, guest, "read", vcpu=2, gfn=8, off=0, len=1)
            (req,) = (await next_event(pager, "mem_event"))["reqs"]
            await pager.call("prep", gfns=[8], pages=[page(8)])
            bad = [{**rsp(req), "gfn": 9}, {**rsp(req), "vcpu_id": 1}, {**rsp(req), "seq": 99}]
            res = await pager.call("resume", rsps=bad)
            assert res["results"] == ["EINVAL", "EINVAL", "ENOENT"]
            await trio.testing.wait_all_tasks_blocked()
            assert not access.done.is_set()
            assert (await pager.call("resume", rsps=[rsp(req)]))["results"] == [0]
            await access.done.wait()
            assert access.reply["data"] == b"\x08"


async def test_foreign_map_populates(harness: Harness) -> None:
    with trio.fail_after(10):
        async with harness.client("pager") as pager, harness.client("mapper") as mapper:
            await page_out(pager, [12])
            assert (await mapper.call("map", gfns=[12]))["pages"] == ["ENOENT"]
            (req,) = (await next_event(pager, "mem_event"))["reqs"]
            assert (req["gfn"], req["vcpu_id"], req["flags"]) == (12, -1, MemEventFlag.FOREIGN)
            # Retrying before the page-in: ENOENT again, and no second request.
            assert (await mapper.call("map", gfns=[12]))["pages"] == ["ENOENT"]
            await pager.call("prep", gfns=[12], pages=[page(12)])
            await pager.call("resume", rsps=[rsp(req)])
            assert (await mapper.call("map", gfns=[12]))["pages"] == [page(12)]
            assert (await _status(harness))["domains"][0]["ring"]["used"] == 0


async def test_prefetch_and_idempotent_prep(harness: Harness) -> None:
    with trio.fail_after(10):
        async with harness.client("pager") as pager, harness.client("guest") as guest:
            await guest.call("write", vcpu=0, gfn=20, off=10, data=b"keep")
            copy = (await pager.call("map", gfns=[20]))["pages"][0]
            await page_out(pager, [20, 21])
            res = await pager.call("prep", gfns=[20, 21, 21, 22], pages=[copy, None, page(1), b"x"])
            assert res["results"] == [0, "EINVAL", 0, "ENOENT"]
            audit = await pager.call("audit", start=20, count=3)
            assert audit["types"] == b"\x00\x00\x00" and audit["paged_pages"] == 0
            assert (await guest.call("read", vcpu=0, gfn=20, off=10, len=4))["data"] == b"keep"


async def test_audit_and_accessed(harness: Harness) -> None:
    with trio.fail_after(10):
        async with (
            harness.client("pager") as pager,
            harness.client("guest") as guest,
            harness.client("control", None) as control,
        ):
            await page_out(pager, [1])
            bits = (await pager.call("accessed", start=0, count=64, clear=True))["bits"]
            assert unpack_bits(bits, 64) == bytearray(64)
            await guest.call("read", vcpu=0, gfn=33, off=0, len=1)
            await guest.call("write", vcpu=0, gfn=40, off=0, data=b"1")
            bits = (await pager.call("accessed", start=32, count=16, clear=True))["bits"]
            assert [i for i, b in enumerate(unpack_bits(bits, 16)) if b] == [1, 8]
            again = await control.call("accessed", domid=1, start=32, count=16)
            assert unpack_bits(again["bits"], 16) == bytearray(16)
            audit = await control.call("audit", domid=1, start=0, count=64)
            assert audit["types"][:3] == b"\x00\x02\x00"
            assert unpack_bits(audit["frames"], 64)[:3] == bytearray([1, 0, 1])
            assert (audit["tot_pages"], audit["paged_pages"], audit["target"]) == (63, 1, 64)
            assert await _errno(pager.call("audit", start=60, count=5)) == "EINVAL"
            assert await _errno(control.call("audit", start=0, count=1)) == "ESRCH"
            assert (await pager.call("nominate", gfns=[64, 2]))["results"] == ["EINVAL", 0]
            counters = (await control.call("counters"))["domains"][0]["counters"]
            assert counters["page.nominated"] == 2 and counters["page.evicted"] == 1
            assert (await control.call("check"))["violations"] == []


@pytest.mark.parametrize("config", [HvConfig(nr_gfns=64, vcpus=2, mmio_gfns=(0, 63))])
async def test_mmio_and_status(harness: Harness) -> None:
    with trio.fail_after(10):
        async with harness.client("pager") as pager, harness.client("guest") as guest:
            assert (await pager.call("nominate", gfns=[0, 63]))["results"] == ["EBUSY"] * 2
            assert await _errno(guest.call("read", vcpu=0, gfn=0, off=0, len=1)) == "EFAULT"
            assert (await guest.call("decrease_reservation", gfns=[63]))["results"] == ["EFAULT"]
            st = await _status(harness)
            (d,) = st["domains"]
            assert (d["tot_pages"], d["target"], d["counts"]["mmio"]) == (62, 62, 2)
            assert d["counts"]["ram_rw"] == 62 and d["vcpus"] == 2
            assert d["pager"] == {"attached": True, "epoch": 1, "orphaned": False}
            assert st["host"]["frames"] == 64 + 16 + 64
            assert st["host"]["free"] == st["host"]["frames"] - 64


async def test_domain_destroy_ends_paused_accesses(harness: Harness) -> None:
    with trio.fail_after(10):
        async with harness.client("control", None) as control:
            domid = (await control.call("domain_create", nr_gfns=8, vcpus=1))["domid"]
            async with (
                harness.client("pager", domid) as pager,
                harness.client("guest", domid) as guest,
                trio.open_nursery() as n,
            ):
                await page_out(pager, [1])
                access = spawn(n, guest, "read", vcpu=0, gfn=1, off=0, len=1)
                await next_event(pager, "mem_event")
                await control.call("domain_destroy", domid=domid)
                await access.done.wait()
                assert access.reply["err"] == "ESRCH"
                assert await _errno(pager.call("nominate", gfns=[2])) == "ESRCH"
                assert await _errno(control.call("domain_destroy", domid=domid)) == "ESRCH"
            big = control.call("domain_create", nr_gfns=1 << 20, vcpus=1)
            assert await _errno(big) == "ENOMEM"
            bad = control.call("domain_create", nr_gfns=8, vcpus=1, mmio_gfns=[8])
            assert await _errno(bad) == "EINVAL"
        harness.check()


async def test_a_peer_that_does_not_read_is_dropped(harness: Harness) -> None:
    ours, theirs = trio.testing.lockstep_stream_pair()  # hv's sends block until we read
    ended = trio.Event()

    async def serve() -> None:
        await harness.hv.serve_stream(theirs, "privcmd.sock")
        ended.set()

    async def flood() -> None:
        # Requests keep coming, in bursts, as from a real peer: the replies to one burst go
        # out as one write (cork), and once that write is stuck the next bursts' replies
        # queue one by one until the queue's bound drops the peer (over any stream).
        await ours.send_all(encode_frame({"op": "hello", "id": 0, "v": 1, "role": "control"}))
        ids = itertools.count(1)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                burst = [encode_frame({"op": "status", "id": next(ids)}) for _ in range(50)]
                await ours.send_all(b"".join(burst))

    with trio.fail_after(10):
        harness.nursery.start_soon(serve)
        async with trio.open_nursery() as n:
            n.start_soon(flood)
            await ended.wait()  # hv gave up on us: serve_stream returned without raising
        await ours.aclose()
        async with harness.client("control", None) as control:  # everyone else is served
            assert (await control.call("check"))["violations"] == []


@pytest.mark.parametrize("config", [HvConfig(nr_gfns=8, vcpus=1, host_frames=2048)])
async def test_domain_count_is_bounded(harness: Harness) -> None:
    with trio.fail_after(20):
        async with harness.client("control", None) as control:
            for _ in range(MAX_DOMAINS - 1):
                await control.call("domain_create", nr_gfns=1, vcpus=1)
            assert await _errno(control.call("domain_create", nr_gfns=1, vcpus=1)) == "ENOSPC"
            st = await control.call("status")
            assert len(st["domains"]) == MAX_DOMAINS
            assert len((await control.call("counters"))["domains"]) == MAX_DOMAINS
