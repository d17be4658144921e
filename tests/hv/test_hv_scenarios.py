"""Scenarios over in-memory streams: pagers, guests, mappers and control talking to one hv."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hv_helpers import Harness, next_event, page, page_out, rsp, spawn

from hv import HvConfig
from protocol import MemEventFlag, OpError

VP, DROP, EF, FG = (
    MemEventFlag.VCPU_PAUSED,
    MemEventFlag.DROP_PAGE,
    MemEventFlag.EVICT_FAIL,
    MemEventFlag.FOREIGN,
)


async def test_two_vcpus_fault_on_one_gfn(harness: Harness) -> None:
    with trio.fail_after(10):
        async with (
            harness.client("pager") as pager,
            harness.client("guest") as guest,
            trio.open_nursery() as n,
        ):
            await guest.call("write", vcpu=0, gfn=7, off=100, data=b"seven")
            copy = (await pager.call("map", gfns=[7]))["pages"][0]
            await page_out(pager, [7])
            r0 = spawn(n, guest, "read", vcpu=0, gfn=7, off=100, len=5)
            first = (await next_event(pager, "mem_event"))["reqs"]
            r1 = spawn(n, guest, "write", vcpu=1, gfn=7, off=0, data=b"x")
            second = (await next_event(pager, "mem_event"))["reqs"]
            reqs = first + second
            assert [(q["gfn"], q["vcpu_id"], q["flags"]) for q in reqs] == [
                (7, 0, VP),
                (7, 1, VP),
            ]
            assert [q["p2mt"] for q in reqs] == ["paged", "paging_in_start"]
            assert reqs[0]["seq"] < reqs[1]["seq"]
            status = (await _control_status(harness))["domains"][0]
            assert sorted(status["paused_vcpus"]) == [0, 1]
            assert status["ring"]["used"] == 2
            harness.check()
            assert (await pager.call("prep", gfns=[7], pages=[copy]))["results"] == [0]
            assert (await pager.call("resume", rsps=[rsp(reqs[0])]))["results"] == [0]
            await r0.done.wait()
            assert r0.reply["data"] == b"seven"
            assert not r1.done.is_set(), "vCPU 1 stays paused until its own request is answered"
            assert (await pager.call("resume", rsps=[rsp(reqs[1])]))["results"] == [0]
            await r1.done.wait()
            assert r1.ok
            # Answering again is ENOENT ("already done").
            assert (await pager.call("resume", rsps=[rsp(reqs[1])]))["results"] == ["ENOENT"]
            assert (await guest.call("read", vcpu=2, gfn=7, off=0, len=1))["data"] == b"x"
        harness.check()


async def _control_status(harness: Harness) -> dict:
    async with harness.client("control", None) as control:
        return await control.call("status")


async def test_guest_write_fails_eviction(harness: Harness) -> None:
    with trio.fail_after(10):
        async with (
            harness.client("pager") as pager,
            harness.client("guest") as guest,
            trio.open_nursery() as n,
        ):
            await guest.call("write", vcpu=0, gfn=3, off=0, data=b"old")
            assert (await pager.call("nominate", gfns=[3]))["results"] == [0]
            # Reading a nominated page is immediate.
            assert (await guest.call("read", vcpu=0, gfn=3, off=0, len=3))["data"] == b"old"
            w = spawn(n, guest, "write", vcpu=1, gfn=3, off=0, data=b"new")
            (req,) = (await next_event(pager, "mem_event"))["reqs"]
            assert req["flags"] == VP | EF and req["p2mt"] == "paging_out"
            assert (await pager.call("evict", gfns=[3]))["results"] == ["EBUSY"]
            audit = await pager.call("audit", start=3, count=1)
            assert audit["types"] == b"\x03" and audit["frames"] == b"\x01"
            # No prep needed: the gfn kept its frame. Resume brings it back to ram_rw.
            assert (await pager.call("resume", rsps=[rsp(req)]))["results"] == [0]
            await w.done.wait()
            assert w.ok
            assert (await guest.call("read", vcpu=0, gfn=3, off=0, len=3))["data"] == b"new"
            assert (await pager.call("audit", start=3, count=1))["types"] == b"\x00"
        harness.check()


@pytest.mark.parametrize("config", [HvConfig(nr_gfns=32, vcpus=4, ring_size=2)])
async def test_ring_full(harness: Harness) -> None:
    with trio.fail_after(10):
        async with (
            harness.client("pager") as pager,
            harness.client("guest") as guest,
            harness.client("mapper") as mapper,
            trio.open_nursery() as n,
        ):
            await page_out(pager, [1, 2, 3, 4])
            a = spawn(n, guest, "read", vcpu=0, gfn=1, off=0, len=1)
            b = spawn(n, guest, "read", vcpu=1, gfn=2, off=0, len=1)
            reqs = []
            while len(reqs) < 2:
                reqs += (await next_event(pager, "mem_event"))["reqs"]
            reqs.sort(key=lambda q: q["gfn"])  # a and b raced to the ring
            c = spawn(n, guest, "read", vcpu=2, gfn=3, off=0, len=1)
            await trio.testing.wait_all_tasks_blocked()
            status = (await _control_status(harness))["domains"][0]
            assert status["ring"] == {"size": 2, "used": 2, "waiters": 1}
            assert sorted(status["paused_vcpus"]) == [0, 1, 2]
            # Foreign callers are refused at once, and no request is queued for them.
            assert (await mapper.call("map", gfns=[4]))["pages"] == ["ENOENT"]
            assert (await pager.call("audit", start=4, count=1))["types"] == b"\x02"
            # The balloon cannot put its DROP_PAGE: EAGAIN and nothing changes.
            dec = await guest.call("decrease_reservation", gfns=[4])
            assert dec["results"] == ["EAGAIN"]
            # Detach is refused while a vCPU waits.
            with pytest.raises(OpError) as exc:
                await pager.call("detach")
            assert exc.value.errno == "EBUSY"
            harness.check()
            assert (await pager.call("prep", gfns=[1], pages=[page(1)]))["results"] == [0]
            assert (await pager.call("resume", rsps=[rsp(reqs[0])]))["results"] == [0]
            (req_c,) = (await next_event(pager, "mem_event"))["reqs"]
            assert req_c["gfn"] == 3 and req_c["vcpu_id"] == 2
            await a.done.wait()
            assert a.reply["data"] == b"\x01"
            for req, gfn in ((reqs[1], 2), (req_c, 3)):
                await pager.call("prep", gfns=[gfn], pages=[page(gfn)])
                assert (await pager.call("resume", rsps=[rsp(req)]))["results"] == [0]
            await b.done.wait()
            await c.done.wait()
            assert (b.reply["data"], c.reply["data"]) == (b"\x02", b"\x03")
        harness.check()


async def test_pager_reattach_redelivers(harness: Harness) -> None:
    with trio.fail_after(10):
        async with harness.client("guest") as guest, trio.open_nursery() as n:
            async with harness.client("pager") as pager:
                assert pager.info["epoch"] == 1
                copies = {g: page(g) for g in (10, 11, 12)}
                for g, data in copies.items():
                    await guest.call("write", vcpu=0, gfn=g, off=0, data=data)
                await page_out(pager, list(copies))
                accesses = [
                    spawn(n, guest, "read", vcpu=v, gfn=g, off=0, len=4096)
                    for v, g in enumerate(copies)
                ]
                seen = []
                while len(seen) < 3:
                    seen += (await next_event(pager, "mem_event"))["reqs"]
            # The pager died with three requests unanswered: the ring keeps them.
            await trio.testing.wait_all_tasks_blocked()
            status = (await _control_status(harness))["domains"][0]
            assert status["pager"] == {
                "attached": False,
                "epoch": 1,
                "orphaned": False,
                "uptime_s": 0.0,
            }
            assert status["ring"]["used"] == 3
            harness.check()
            async with harness.client("pager") as pager2:
                assert pager2.info["epoch"] == 2
                assert (await next_event(pager2, "target"))["tot_pages"] == 64
                redelivered = (await next_event(pager2, "mem_event"))["reqs"]
                assert redelivered == seen, "every unanswered request, oldest first"
                gfns = [q["gfn"] for q in redelivered]
                await pager2.call("prep", gfns=gfns, pages=[copies[g] for g in gfns])
                res = await pager2.call("resume", rsps=[rsp(q) for q in redelivered])
                assert res["results"] == [0, 0, 0]
                for access, g in zip(accesses, copies, strict=True):
                    await access.done.wait()
                    assert access.reply["data"] == copies[g]
                await pager2.call("detach")
        harness.check()


@pytest.mark.parametrize("config", [HvConfig(nr_gfns=64, vcpus=2, ring_mode="xen")])
async def test_xen_mode_orphans_the_ring(harness: Harness) -> None:
    with trio.fail_after(10):
        async with harness.client("guest") as guest, trio.open_nursery() as n:
            async with harness.client("pager") as pager:
                await page_out(pager, [5])
                access = spawn(n, guest, "read", vcpu=0, gfn=5, off=0, len=1)
                await next_event(pager, "mem_event")
            await trio.testing.wait_all_tasks_blocked()
            async with harness.client("control", None) as control:
                st = (await control.call("status"))["domains"][0]
                assert st["pager"] == {
                    "attached": False,
                    "epoch": 1,
                    "orphaned": True,
                    "uptime_s": 0.0,
                }
                for takeover in (False, True):
                    async with harness.client("pager", hello=False) as late:
                        with pytest.raises(OpError) as exc:
                            await late.hello(1, takeover=takeover)
                        assert exc.value.errno == "EBUSY"
                # Control's detach is refused too while a request is unanswered.
                with pytest.raises(OpError) as exc:
                    await control.call("detach", domid=1)
                assert exc.value.errno == "EBUSY"
                await trio.testing.wait_all_tasks_blocked()
                assert not access.done.is_set(), "the vCPU stays paused"
                st = (await control.call("status"))["domains"][0]
                assert st["paused_vcpus"] == [0]
                harness.check()
                n.cancel_scope.cancel()


@pytest.mark.parametrize("config", [HvConfig(nr_gfns=64, vcpus=2, ring_mode="xen")])
async def test_xen_mode_control_detach_clears_a_clean_orphan(harness: Harness) -> None:
    with trio.fail_after(10):
        async with harness.client("pager") as pager:
            await page_out(pager, [5])
            await pager.call("prep", gfns=[5], pages=[page(5)])  # paged, unrequested -> ram_rw
        async with harness.client("control", None) as control:
            await trio.testing.wait_all_tasks_blocked()
            assert (await control.call("status"))["domains"][0]["pager"]["orphaned"]
            await control.call("detach", domid=1)
            async with harness.client("pager") as pager:
                assert pager.info["epoch"] == 2


async def test_two_domains_with_independent_pagers(harness: Harness) -> None:
    with trio.fail_after(10):
        async with harness.client("control", None) as control:
            domid = (await control.call("domain_create", nr_gfns=16, vcpus=1))["domid"]
            assert domid == 2
            async with (
                harness.client("pager", 1) as p1,
                harness.client("pager", 2) as p2,
                harness.client("guest", 1) as g1,
                harness.client("guest", 2) as g2,
                trio.open_nursery() as n,
            ):
                assert p1.info["instance"] != p2.info["instance"]
                assert (p1.info["nr_gfns"], p2.info["nr_gfns"]) == (64, 16)
                await g1.call("write", vcpu=0, gfn=4, off=0, data=b"one")
                await g2.call("write", vcpu=0, gfn=4, off=0, data=b"two")
                c1 = (await p1.call("map", gfns=[4]))["pages"][0]
                c2 = (await p2.call("map", gfns=[4]))["pages"][0]
                await page_out(p1, [4])
                await page_out(p2, [4])
                a1 = spawn(n, g1, "read", vcpu=0, gfn=4, off=0, len=3)
                a2 = spawn(n, g2, "read", vcpu=0, gfn=4, off=0, len=3)
                (q1,) = (await next_event(p1, "mem_event"))["reqs"]
                (q2,) = (await next_event(p2, "mem_event"))["reqs"]
                assert q1["seq"] == q2["seq"] == 1, "seq is per domain"
                await p2.call("prep", gfns=[4], pages=[c2])
                await p2.call("resume", rsps=[rsp(q2)])
                await a2.done.wait()
                assert a2.reply["data"] == b"two"
                assert not a1.done.is_set()
                await control.call("set_target", domid=1, tot_pages=10)
                assert (await next_event(p1, "target"))["tot_pages"] == 10
                await p1.call("prep", gfns=[4], pages=[c1])
                await p1.call("resume", rsps=[rsp(q1)])
                await a1.done.wait()
                assert a1.reply["data"] == b"one"
                harness.check()
            free_before = (await control.call("status"))["host"]["free"]
            await control.call("domain_destroy", domid=2)
            assert (await control.call("status"))["host"]["free"] == free_before + 16
            assert [d["domid"] for d in (await control.call("status"))["domains"]] == [1]
        harness.check()


async def test_a_guest_gone_while_paused_frees_its_vcpu(harness: Harness) -> None:
    """The paused access waits without a task (its retry runs inside the resume): when the
    guest's connection closes, the vCPU is free again and the request stays on the ring;
    answering it later harms nothing, and the next guest's access on that vCPU works."""
    with trio.fail_after(10):
        async with harness.client("pager") as pager:
            async with harness.client("guest") as guest:
                await guest.call("write", vcpu=0, gfn=3, off=0, data=b"three")
                copy = (await pager.call("map", gfns=[3]))["pages"][0]
                await page_out(pager, [3])
                async with trio.open_nursery() as n:
                    spawn(n, guest, "read", vcpu=0, gfn=3, off=0, len=5)
                    (req,) = (await next_event(pager, "mem_event"))["reqs"]
                    status = (await _control_status(harness))["domains"][0]
                    assert status["paused_vcpus"] == [0]
                    n.cancel_scope.cancel()
            # The guest is gone: its vCPU is no longer paused or busy.
            async with harness.client("control", None) as control:
                while (await control.call("status"))["domains"][0]["paused_vcpus"]:
                    await trio.testing.wait_all_tasks_blocked()
            assert (await pager.call("prep", gfns=[3], pages=[copy]))["results"] == [0]
            assert (await pager.call("resume", rsps=[rsp(req)]))["results"] == [0]
            async with harness.client("guest") as guest2:
                assert (await guest2.call("read", vcpu=0, gfn=3, off=0, len=5))["data"] == b"three"
        harness.check()
