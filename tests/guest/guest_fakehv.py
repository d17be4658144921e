"""A deliberately tiny guest-side server for tests that need hv to misbehave.

The real hv never hands out wrong bytes or keeps a vCPU paused for no reason, so the
guest's detectors (corruption, stuck vCPUs) can only be proven against a server that does.
Everything else in tests/guest runs against the real in-process hv.
"""

from __future__ import annotations

from typing import Any

import trio

from protocol import PAGE_SIZE, error_reply, ok_reply, parse_request
from transport import ConnectionClosed, open_connection


class FakeGuestHv:
    """Serves the guest ops from a dict of pages; `corrupt` and `hold` inject faults."""

    def __init__(self, nr_gfns: int, vcpus: int) -> None:
        self.nr_gfns = nr_gfns
        self.vcpus = vcpus
        self.pages: dict[int, bytes] = {}
        self.invalid: set[int] = set()
        self.corrupt: set[int] = set()  # reads of these gfns get one flipped byte
        self.stale: dict[int, bytes] = {}  # reads of these gfns get these bytes
        self.hold: set[int] = set()  # accesses to these gfns never answer
        self.held = 0

    def _page(self, gfn: int) -> bytes:
        return self.pages.get(gfn, bytes(PAGE_SIZE))

    async def serve(self, stream: trio.abc.Stream) -> None:
        """Serve one guest connection until it closes."""
        async with open_connection(stream) as conn:
            try:
                while True:
                    msg = await conn.receive()
                    req = parse_request(msg, "guest")
                    reply = self._handle(req.op, req.id, req.args)
                    if reply is not None:
                        await conn.send(reply)
            except ConnectionClosed:
                return

    def _handle(self, op: str, rid: int, a: dict[str, Any]) -> dict[str, Any] | None:
        if op == "hello":
            return ok_reply(
                rid,
                v=1,
                domid=1,
                nr_gfns=self.nr_gfns,
                vcpus=self.vcpus,
                page_size=PAGE_SIZE,
                ring_size=64,
                instance="fake",
            )
        if op in ("read", "write"):
            gfn = a["gfn"]
            if gfn in self.hold:
                self.held += 1
                return None  # the vCPU stays paused forever
            if gfn in self.invalid:
                return error_reply(rid, "EFAULT", "ballooned out")
            if op == "write":
                page = bytearray(self._page(gfn))
                page[a["off"] : a["off"] + len(a["data"])] = a["data"]
                self.pages[gfn] = bytes(page)
                return ok_reply(rid)
            page = self.stale.get(gfn, self._page(gfn))
            if gfn in self.corrupt:
                page = bytes([page[0] ^ 1]) + page[1:]
            return ok_reply(rid, data=page[a["off"] : a["off"] + a["len"]])
        if op == "decrease_reservation":
            results: list[Any] = []
            for gfn in a["gfns"]:
                if gfn in self.invalid:
                    results.append("ENOENT")
                else:
                    self.invalid.add(gfn)
                    self.pages.pop(gfn, None)
                    results.append(0)
            return ok_reply(rid, results=results)
        if op == "increase_reservation":
            results = []
            for gfn in a["gfns"]:
                if gfn in self.invalid:
                    self.invalid.discard(gfn)
                    results.append(0)
                else:
                    results.append("EEXIST")
            return ok_reply(rid, results=results)
        return error_reply(rid, "ENOSYS", op)
