"""A burst of faults: the requests of one read of the guest's connection share a mem_event."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import trio
from hv_helpers import Harness, next_event, page, page_out, rsp

from hv import HvConfig, Hypervisor
from protocol import MemEventFlag
from transport import Client, connection
from transport.sockbuf import SEND_BUFFER


async def test_vcpus_faulting_in_one_burst_cost_the_pager_one_event(harness: Harness) -> None:
    gfns = [3, 9, 12, 20]
    with trio.fail_after(10):
        async with harness.client("pager") as pager, harness.client("guest") as guest:
            copies = []
            for i, g in enumerate(gfns):
                await guest.call("write", vcpu=0, gfn=g, off=0, data=page(i + 1))
                copies.append((await pager.call("map", gfns=[g]))["pages"][0])
            await page_out(pager, gfns)
            # Four vCPUs fault at once: their reads reach hv in one write.
            ids = await guest.send_requests(
                [("read", {"vcpu": v, "gfn": g, "off": 0, "len": 8}) for v, g in enumerate(gfns)]
            )
            reqs = (await next_event(pager, "mem_event"))["reqs"]
            assert [(q["gfn"], q["vcpu_id"]) for q in reqs] == [(g, v) for v, g in enumerate(gfns)]
            assert all(q["flags"] & MemEventFlag.VCPU_PAUSED for q in reqs)
            # One prep and one resume answer the whole burst.
            pid, rid = await pager.send_requests(
                [
                    ("prep", {"gfns": gfns, "pages": copies}),
                    ("resume", {"rsps": list(map(rsp, reqs))}),
                ]
            )
            assert (await pager.call_reply(pid))["results"] == [0] * 4
            assert (await pager.call_reply(rid))["results"] == [0] * 4
            for i, rid in enumerate(ids):
                assert (await guest.call_reply(rid))["data"] == bytes([i + 1]) * 8
            # Nothing else was told to the pager: no second event of the same requests.
            with trio.move_on_after(0.2):
                ev = await next_event(pager, "mem_event")
                raise AssertionError(f"a second mem_event: {ev}")
        harness.check()


@pytest.mark.parametrize("config", [HvConfig(nr_gfns=64, vcpus=4, ring_size=2)])
async def test_a_vcpu_that_waited_for_a_slot_still_tells_the_pager(harness: Harness) -> None:
    # Two slots: the third fault waits in a task for one, then populates from that task,
    # where no session flushes after it: the access itself sends its event.
    gfns = [10, 11, 12]
    with trio.fail_after(10):
        async with harness.client("pager") as pager, harness.client("guest") as guest:
            await page_out(pager, gfns)
            ids = await guest.send_requests(
                [("read", {"vcpu": v, "gfn": g, "off": 0, "len": 1}) for v, g in enumerate(gfns)]
            )
            first = (await next_event(pager, "mem_event"))["reqs"]
            assert [q["gfn"] for q in first] == [10, 11]  # the third waits for a slot
            # A prep and resume of gfn 10 free its slot; nothing else is sent after them.
            assert (await pager.call("prep", gfns=[10], pages=[page(0)]))["results"] == [0]
            assert (await pager.call("resume", rsps=[rsp(first[0])]))["results"] == [0]
            (late,) = (await next_event(pager, "mem_event", seconds=2))["reqs"]
            assert (late["gfn"], late["vcpu_id"]) == (12, 2)
            assert (await guest.call_reply(ids[0]))["data"] == b"\0"
            for q, g in ((first[1], 11), (late, 12)):
                assert (await pager.call("prep", gfns=[g], pages=[page(0)]))["results"] == [0]
                assert (await pager.call("resume", rsps=[rsp(q)]))["results"] == [0]
            for rid in ids[1:]:
                assert (await guest.call_reply(rid))["data"] == b"\0"
        harness.check()


def _counting_writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """From now on, every frame written to a socket at once (`connection._write_some`)."""
    writes: list[bytes] = []
    write_some = connection._write_some

    def counting(sock: trio.socket.SocketType, frames: list[bytes]) -> int:
        writes.append(b"".join(frames))  # the frames of one write
        return write_some(sock, frames)

    monkeypatch.setattr(connection, "_write_some", counting)
    return writes


async def _paused_reads(pager: Client, guest: Client, marks: list[bytes]) -> tuple[list[int], Any]:
    """Four vCPUs read gfns 4-7, which hold `marks` and are paged out: the guest's request
    ids and the `mem_event` requests, prepped (a resume of them retries the four reads)."""
    gfns = [4, 5, 6, 7]
    for g, m in zip(gfns, marks, strict=True):
        await guest.call("write", vcpu=0, gfn=g, off=0, data=m)
    copies = (await pager.call("map", gfns=gfns))["pages"]
    await page_out(pager, gfns)
    ids = await guest.send_requests(
        [("read", {"vcpu": v, "gfn": g, "off": 0, "len": 8}) for v, g in enumerate(gfns)]
    )
    reqs = (await next_event(pager, "mem_event"))["reqs"]
    assert (await pager.call("prep", gfns=gfns, pages=copies))["results"] == [0] * 4
    return ids, reqs


async def _resume_in_one_write(
    pager: Client,
    guest: Client,
    ids: list[int],
    reqs: Any,
    marks: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One resume of `_paused_reads`' requests: the guest reads `marks` back, its four
    replies all in one write (one wake-up of the guest)."""
    writes = _counting_writes(monkeypatch)
    assert (await pager.call("resume", rsps=[rsp(q) for q in reqs]))["results"] == [0] * 4
    for rid, m in zip(ids, marks, strict=True):
        assert (await guest.call_reply(rid))["data"] == m
    monkeypatch.undo()
    with_replies = [w for w in writes if any(m in w for m in marks)]
    assert len(with_replies) == 1 and all(m in with_replies[0] for m in marks)


async def test_a_resume_answers_a_guest_s_retried_accesses_in_one_write(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks = [bytes([0xA0 + i]) * 8 for i in range(4)]  # what each vCPU reads back
    with trio.fail_after(10):
        async with harness.client("pager") as pager, harness.client("guest") as guest:
            ids, reqs = await _paused_reads(pager, guest, marks)
            await _resume_in_one_write(pager, guest, ids, reqs, marks, monkeypatch)
        harness.check()


async def test_two_hvs_in_one_process_hold_their_guests_replies_apart(
    harness: Harness, config: HvConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two hv instances in one process (two simulated worlds run by threads, say): a resume
    # of the first is interrupted by a whole run of the second, resume included. The
    # first's guest still gets its four retried replies in one write, and both worlds end
    # well: the guest connections a resume holds back belong to that resume's domain.
    marks = [bytes([0xA0 + i]) * 8 for i in range(4)]
    other = Hypervisor(config)

    async def other_world() -> None:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                h = Harness(other, nursery)
                async with h.client("pager") as pager, h.client("guest") as guest:
                    theirs = [bytes([0xB0 + i]) * 8 for i in range(4)]
                    ids, reqs = await _paused_reads(pager, guest, theirs)
                    results = (await pager.call("resume", rsps=[rsp(q) for q in reqs]))["results"]
                    assert results == [0] * 4
                    for rid, m in zip(ids, theirs, strict=True):
                        assert (await guest.call_reply(rid))["data"] == m
                nursery.cancel_scope.cancel()
        h.check()

    domain = harness.hv.domain(1)
    resume = domain.resume

    def interrupted(rsps: Any) -> Any:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(trio.run, other_world).result(timeout=30)
        return resume(rsps)

    try:
        with trio.fail_after(40):
            async with harness.client("pager") as pager, harness.client("guest") as guest:
                ids, reqs = await _paused_reads(pager, guest, marks)
                monkeypatch.setattr(domain, "resume", interrupted)
                await _resume_in_one_write(pager, guest, ids, reqs, marks, monkeypatch)
            harness.check()
    finally:
        other.close()


def _wmem_max() -> int:
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            return int(f.read())
    except OSError:
        return 0


@pytest.mark.skipif(_wmem_max() < SEND_BUFFER, reason="net.core.wmem_max caps SO_SNDBUF")
async def test_a_nominate_and_map_of_64_pages_is_answered_in_one_write(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket takes both replies (a 262 KiB map reply among them) at once: none of it
    waits for the writer task (transport.sockbuf.SEND_BUFFER)."""
    with trio.fail_after(10):
        async with harness.client("pager") as pager:
            gfns = list(range(64))
            taken: list[tuple[int, int]] = []  # (bytes offered, bytes taken) per write
            write_some = connection._write_some

            def counting(sock: trio.socket.SocketType, frames: list[bytes]) -> int:
                n = write_some(sock, frames)
                taken.append((sum(map(len, frames)), n))
                return n

            monkeypatch.setattr(connection, "_write_some", counting)
            nom_id, map_id = await pager.send_requests(
                [("nominate", {"gfns": gfns}), ("map", {"gfns": gfns})]
            )
            assert (await pager.call_reply(nom_id))["results"] == [0] * 64
            assert len((await pager.call_reply(map_id))["pages"]) == 64
            monkeypatch.undo()
            big = [(offered, n) for offered, n in taken if offered > 64 * 4096]
            assert len(big) == 1 and big[0][0] == big[0][1], taken
