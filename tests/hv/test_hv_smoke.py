"""A first walk through the paging path over memory streams."""

from __future__ import annotations

import trio
from hv_helpers import Harness, next_event

from protocol import MemEventFlag


async def test_page_out_and_in(harness: Harness) -> None:
    with trio.fail_after(10):
        async with harness.client("pager") as pager, harness.client("guest") as guest:
            assert (await next_event(pager, "target"))["tot_pages"] == 64
            await guest.call("write", vcpu=0, gfn=5, off=0, data=b"hello")
            assert (await pager.call("nominate", gfns=[5]))["results"] == [0]
            pages = (await pager.call("map", gfns=[5]))["pages"]
            assert pages[0][:5] == b"hello"
            assert (await pager.call("evict", gfns=[5]))["results"] == [0]
            harness.check()
            async with trio.open_nursery() as n:
                result = {}

                async def read() -> None:
                    result["r"] = await guest.call("read", vcpu=1, gfn=5, off=0, len=5)

                n.start_soon(read)
                ev = await next_event(pager, "mem_event")
                (req,) = ev["reqs"]
                assert req["gfn"] == 5 and req["flags"] == MemEventFlag.VCPU_PAUSED
                assert req["p2mt"] == "paged"
                harness.check()
                assert (await pager.call("prep", gfns=[5], pages=[pages[0]]))["results"] == [0]
                rsp = {k: req[k] for k in ("seq", "gfn", "vcpu_id", "flags")}
                assert (await pager.call("resume", rsps=[rsp]))["results"] == [0]
            assert result["r"]["data"] == b"hello"
