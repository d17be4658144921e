"""Xen 4.17's own xenpaging against hv through xenshim: paging, the ring's corner cases.

hv runs in this process (its state is read directly), xenpaging is a child on the shim
built from this tree. Every page the guest wrote is read back and compared.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio
from xen_helpers import Rig, Shim, Tap, fill, guest, page, rig, verify

from guest import GuestConfig, Shadow, run_workload, verify_all
from protocol import P2MType

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=["plain", "asan"])
def any_shim(request: pytest.FixtureRequest) -> Shim:
    """Each corner case through the plain shim and the AddressSanitizer build."""
    return request.getfixturevalue("asan_shim" if request.param == "asan" else "shim")


NR = 1024


def _expect(nr: int = NR) -> dict[int, bytes]:
    return {gfn: page(gfn, 1) for gfn in range(nr)}


async def _page_down_up_down(r: Rig, target: int) -> None:
    await r.attached()
    await r.paged_down(target)
    assert r.status()["paged_pages"] >= NR - target - 1


@pytest.mark.parametrize("build", ["plain", "asan"])
async def test_pages_down_to_target_and_back_on_sigterm(
    tmp_path: Path, shim: Shim, asan_shim: Shim, build: str
) -> None:
    s = asan_shim if build == "asan" else shim
    with trio.fail_after(150):
        async with rig(tmp_path, s, nr_gfns=NR, vcpus=4) as r, guest(r) as g:
            await fill(g, range(NR), 4)
            proc = await r.start_pager()
            await _page_down_up_down(r, 256)
            if s.preload:  # the sanitizer is really in the process, under the shim
                maps = await trio.Path(f"/proc/{proc.pid}/maps").read_text()
                assert "libasan" in maps and str(s.lib_dir) in maps
            assert r.dom.counters["page.evicted"] >= NR - 256 - 1
            # gfn 0 is never paged out (xenpaging's policy); all others may be
            assert r.dom.p2m.type(0) == P2MType.ram_rw
            # every byte back while xenpaging keeps the target: reads populate, it pages in
            assert await verify(g, _expect(), 4) == []
            assert await r.stop_pager(proc) == 0, r.log()
            st = r.status()
            assert st["paged_pages"] == 0 and st["tot_pages"] == NR
            pager = {k: v for k, v in st["pager"].items() if k != "uptime_s"}  # optional field
            assert pager == {"attached": False, "epoch": 1, "orphaned": False}
            assert st["ring"]["used"] == 0
            assert r.hv.check() == []
            assert await verify(g, _expect(), 4) == []  # resident now, no pager
            assert "ERROR" not in r.log() and "AddressSanitizer" not in r.log(), r.log()


async def test_four_vcpus_fault_for_20_seconds(tmp_path: Path, shim: Shim) -> None:
    with trio.fail_after(170):
        async with rig(tmp_path, shim, nr_gfns=NR, vcpus=4, target=NR // 4) as r, guest(r) as g:
            proc = await r.start_pager()
            await r.attached()
            config = GuestConfig(seed=7, pattern="uniform", vcpus=4, duration=20.0)
            shadow = Shadow(NR, config.seed)
            report = await run_workload(g, config, shadow=shadow)
            assert report.ok, report.to_dict()
            assert report.faults_seen > 100  # the guest really waited on page-ins
            assert r.dom.counters["page.evicted"] > NR
            assert await r.stop_pager(proc) == 0, r.log()
            assert r.status()["paged_pages"] == 0
            assert r.hv.check() == []
            # once more with no pager: every gfn resident and right
            again = await verify_all(g, shadow, vcpus=4)
            assert again.ok and again.verified > NR // 2, again.to_dict()


async def test_target_moved_up_and_down(tmp_path: Path, shim: Shim) -> None:
    with trio.fail_after(150):
        async with rig(tmp_path, shim, nr_gfns=NR, vcpus=4) as r, guest(r) as g:
            await fill(g, range(NR), 4)
            proc = await r.start_pager()
            await r.attached()
            await r.paged_down(200)
            r.dom.set_target(800)  # xenpaging pages back in until tot_pages reaches it
            await r.until(lambda: r.status()["tot_pages"] >= 800, "paged up to 800")
            assert r.status()["paged_pages"] <= NR - 800
            await r.paged_down(100)
            r.dom.set_target(NR)
            await r.until(lambda: r.status()["paged_pages"] == 0, "all paged in for target NR")
            await r.paged_down(300)
            assert await verify(g, _expect(), 4) == []
            assert await r.stop_pager(proc) == 0, r.log()
            assert r.hv.check() == []


async def test_evict_fail_a_write_between_nominate_and_evict(
    tmp_path: Path, any_shim: Shim
) -> None:
    tap = Tap()
    raced: list[int] = []
    with trio.fail_after(120):
        async with rig(tmp_path, any_shim, tap=tap, nr_gfns=NR, vcpus=4) as r, guest(r) as g:
            await fill(g, range(NR), 4)

            async def write_first(gfns: list[int]) -> None:
                # once: the guest writes the nominated gfn before xenpaging's evict lands
                if raced:
                    return
                gfn = gfns[0]
                assert r.dom.p2m.type(gfn) == P2MType.paging_out
                raced.append(gfn)
                r.nursery.start_soon(_write, g, gfn)
                await r.until(lambda: 0 in r.status()["paused_vcpus"], "vCPU 0 paused")
                assert r.dom.p2m.type(gfn) == P2MType.paging_in_start

            tap.on_evict = write_first
            proc = await r.start_pager()
            await r.attached()
            await r.paged_down(512)
            gfn = raced[0]
            # the evict was refused (EBUSY), the EVICT_FAIL request answered: vCPU 0 resumed
            await r.until(lambda: r.status()["paused_vcpus"] == [], "vCPU 0 resumed")
            assert (await g.call("read", vcpu=1, gfn=gfn, off=0, len=4096))["data"] == page(gfn, 2)
            expect = _expect() | {gfn: page(gfn, 2)}
            assert await verify(g, expect, 4) == []
            assert await r.stop_pager(proc) == 0, r.log()
            assert r.hv.check() == []


async def _write(g: object, gfn: int) -> None:
    await g.call("write", vcpu=0, gfn=gfn, off=0, data=page(gfn, 2))  # type: ignore[attr-defined]


async def test_duplicate_requests_from_several_vcpus(tmp_path: Path, any_shim: Shim) -> None:
    tap = Tap()
    with trio.fail_after(120):
        async with rig(tmp_path, any_shim, tap=tap, nr_gfns=NR, vcpus=4) as r, guest(r) as g:
            await fill(g, range(NR), 4)
            proc = await r.start_pager()
            await _page_down_up_down(r, 256)
            gfn = next(x for x in range(NR) if r.dom.p2m.type(x) == P2MType.paged)
            tap.hold()  # hv's mem_events wait: four requests for one gfn pile up on the ring
            got: dict[int, bytes] = {}

            async def reader(v: int) -> None:
                got[v] = (await g.call("read", vcpu=v, gfn=gfn, off=0, len=4096))["data"]

            async with trio.open_nursery() as n:
                for v in range(4):
                    n.start_soon(reader, v)
                await r.until(lambda: len(r.status()["paused_vcpus"]) == 4, "4 vCPUs paused")
                assert r.status()["ring"]["used"] == 4
                tap.release()
            assert got == {v: page(gfn, 1) for v in range(4)}
            await r.until(lambda: r.status()["ring"]["used"] == 0, "ring drained")
            assert await r.stop_pager(proc) == 0, r.log()
            assert await verify(g, _expect(), 4) == []
            assert r.hv.check() == []


async def test_drop_page_by_ballooning(tmp_path: Path, any_shim: Shim) -> None:
    with trio.fail_after(120):
        async with rig(tmp_path, any_shim, nr_gfns=NR, vcpus=4) as r, guest(r) as g:
            await fill(g, range(NR), 4)
            proc = await r.start_pager()
            await _page_down_up_down(r, 256)
            gone = [x for x in range(NR) if r.dom.p2m.type(x) == P2MType.paged][:5]
            res = await g.call("decrease_reservation", gfns=gone)
            assert res["results"] == [0] * 5
            # xenpaging drops its copies and answers each DROP_PAGE: the slots come back
            await r.until(lambda: r.status()["ring"]["used"] == 0, "DROP_PAGE answered")
            assert r.dom.counters["requests"] >= 5
            assert all(r.dom.p2m.type(x) == P2MType.invalid for x in gone)
            assert (await g.call("increase_reservation", gfns=gone))["results"] == [0] * 5
            expect = _expect() | {x: bytes(4096) for x in gone}
            assert await verify(g, expect, 4) == []
            assert await r.stop_pager(proc) == 0, r.log()
            assert r.status()["paged_pages"] == 0
            assert r.hv.check() == []


async def test_full_ring_of_eight(tmp_path: Path, any_shim: Shim) -> None:
    tap = Tap()
    vcpus = 12
    with trio.fail_after(120):
        async with rig(tmp_path, any_shim, tap=tap, nr_gfns=NR, vcpus=vcpus) as r, guest(r) as g:
            await fill(g, range(NR), 4)
            proc = await r.start_pager()
            await _page_down_up_down(r, 256)
            paged = [x for x in range(NR) if r.dom.p2m.type(x) == P2MType.paged][:vcpus]
            tap.hold()
            got: dict[int, bytes] = {}

            async def reader(v: int) -> None:
                gfn = paged[v]
                got[gfn] = (await g.call("read", vcpu=v, gfn=gfn, off=0, len=4096))["data"]

            async with trio.open_nursery() as n:
                for v in range(vcpus):
                    n.start_soon(reader, v)
                await r.until(lambda: len(r.status()["paused_vcpus"]) == vcpus, "every vCPU paused")
                st = r.status()["ring"]
                assert (st["used"], st["waiters"]) == (8, vcpus - 8)  # 8 slots, 4 wait
                tap.release()
            assert got == {gfn: page(gfn, 1) for gfn in paged}
            assert r.dom.counters["ring.full"] >= vcpus - 8
            assert await r.stop_pager(proc) == 0, r.log()
            assert await verify(g, _expect(), 4) == []
            assert r.hv.check() == []


async def test_sigkilled_xenpaging_restarted_loses_its_pages(
    tmp_path: Path, any_shim: Shim
) -> None:
    """What Xen's design loses: a new xenpaging truncates the paging file. A vCPU touching a
    lost gfn is answered (xenpaging does not know the gfn), resumed to nothing, populates
    again: it never gets its data."""
    with trio.fail_after(120):
        async with rig(tmp_path, any_shim, nr_gfns=NR, vcpus=4) as r, guest(r) as g:
            await fill(g, range(NR), 4)
            first = await r.start_pager()
            await _page_down_up_down(r, 256)
            lost = [x for x in range(NR) if r.dom.p2m.type(x) == P2MType.paged]
            first.send_signal(signal.SIGKILL)
            await first.wait()
            await r.until(lambda: not r.status()["pager"]["attached"], "loss seen")
            second = await r.start_pager()
            await r.until(lambda: r.status()["pager"]["epoch"] == 2, "second attached")
            gfn = lost[0]
            resumed = r.dom.counters["page.resumed"]
            async with trio.open_nursery() as n:
                n.start_soon(_read_forever, g, gfn)
                # the loop: request, answer, resume to nothing, populate again
                await r.until(lambda: r.dom.counters["page.resumed"] >= resumed + 20, "resume loop")
                assert r.dom.p2m.type(gfn) in (P2MType.paged, P2MType.paging_in_start)
                assert not r.dom.p2m.has_frame(gfn)
                n.cancel_scope.cancel()
            assert sum(1 for x in lost if not r.dom.p2m.has_frame(x)) == len(lost)
            second.kill()


async def _read_forever(g: object, gfn: int) -> None:
    await g.call("read", vcpu=0, gfn=gfn, off=0, len=8)  # type: ignore[attr-defined]
