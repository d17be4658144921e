"""The pager's calls to hv, each in the chunks the protocol allows (written once here)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import trio

from protocol import MAX_LIST, MAX_PAGES_PER_FRAME, bit
from transport import Client

#: One element of a batched op's `results`: 0, or the errno name (PROTOCOL.md §3).
Result = int | str


def chunks(seq: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    """`seq` in slices of at most `n`."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class HvCalls:
    """hv's privcmd operations over one client, split into protocol-sized requests."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._corked = False  # a `send_joined` holds the connection's frames for others

    async def accessed(self, start: int, count: int) -> bytes:
        """The accessed bits of [start, start + count), cleared as read."""
        reply = await self.client.call("accessed", start=start, count=count, clear=True)
        return reply["bits"]  # a checked reply field

    async def audit(self, start: int, count: int) -> dict[str, Any]:
        """`audit` of [start, start + count); count 0 gives the counters only."""
        return await self.client.call("audit", start=start, count=count)

    async def audit_gfns(self, gfns: Iterable[int]) -> dict[int, tuple[int, bool]]:
        """gfn -> (p2m code, has frame), audited in as few ranges as is reasonable."""
        out: dict[int, tuple[int, bool]] = {}
        todo = sorted(set(gfns))
        i = 0
        while i < len(todo):
            start = todo[i]
            j = i
            while j + 1 < len(todo) and todo[j + 1] - start < 4096:
                j += 1
            reply = await self.audit(start, todo[j] - start + 1)
            for g in todo[i : j + 1]:
                out[g] = (reply["types"][g - start], bit(reply["frames"], g - start))
            i = j + 1
        return out

    async def batched(self, op: str, gfns: Sequence[int]) -> list[Any]:
        """A per-gfn op (`nominate`, `evict`, `mark_broken`): its results, in order."""
        out: list[Any] = []
        for chunk in chunks(gfns, MAX_LIST):
            out += (await self.client.call(op, gfns=list(chunk)))["results"]
        return out

    async def evict(self, gfns: Sequence[int]) -> list[Any]:
        """`evict` of `gfns`: each one's result, in order (`send_joined`: the evicts of
        the batches one disk phase released share a write)."""
        if len(gfns) > MAX_LIST:
            return await self.batched("evict", gfns)
        (rid,) = await self.send_joined([("evict", {"gfns": list(gfns)})])
        return (await self.client.call_reply(rid))["results"]

    async def send_joined(self, requests: Sequence[tuple[str, Mapping[str, Any]]]) -> list[int]:
        """Send `requests` (in one write), joined with those other tasks send in the same
        scheduler pass; their ids, for `Client.call_reply`.

        Page-out's batches go in groups: one disk phase releases several, which evict
        theirs, and their places in the pipeline start as many new batches, which
        nominate and map theirs. The first of a group to send holds the connection's
        outgoing frames (`Connection.cork`) for one scheduler pass, so the others' go out
        in the same write: one wake-up of hv per group instead of one per batch. Each
        request keeps its own reply: no batch waits on another's."""
        client = self.client
        if self._corked:
            return await client.send_requests(requests)
        client.conn.cork()
        self._corked = True
        try:
            rids = await client.send_requests(requests)
            try:
                await trio.lowlevel.checkpoint()  # the others of the group send meanwhile
            except BaseException:
                for rid in rids:
                    client.forget(rid)
                raise
        finally:
            self._corked = False
            client.conn.uncork()
        return rids

    async def map(self, gfns: Sequence[int]) -> list[Any]:
        """`map`: each gfn's page (bytes) or errno, in order."""
        out: list[Any] = []
        for chunk in chunks(gfns, MAX_PAGES_PER_FRAME):
            out += (await self.client.call("map", gfns=list(chunk)))["pages"]
        return out

    async def prep(self, gfns: Sequence[int], pages: Sequence[bytes | None]) -> list[Result]:
        """`prep` (load `pages` into `gfns`; None: no data): each gfn's result, in order."""
        out: list[Result] = []
        for i in range(0, len(gfns), MAX_PAGES_PER_FRAME):
            reply = await self.client.call(
                "prep",
                gfns=list(gfns[i : i + MAX_PAGES_PER_FRAME]),
                pages=list(pages[i : i + MAX_PAGES_PER_FRAME]),
            )
            out += reply["results"]
        return out

    async def resume(self, rsps: Sequence[dict[str, Any]]) -> list[Result]:
        """`resume` with these responses: each one's result, in order."""
        out: list[Result] = []
        for chunk in chunks(rsps, MAX_LIST):
            out += (await self.client.call("resume", rsps=list(chunk)))["results"]
        return out

    async def nominate_and_map(self, gfns: list[int]) -> tuple[list[int], list[Any]]:
        """`nominate` and `map` of `gfns` (at most one request's worth) in one write: their
        results and pages, in order. hv serves the two in order, so each nominated gfn is
        mapped as `paging_out`."""
        client = self.client
        nom_id, map_id = await self.send_joined(
            [("nominate", {"gfns": gfns}), ("map", {"gfns": gfns})]
        )
        try:
            results = (await client.call_reply(nom_id))["results"]
            pages = (await client.call_reply(map_id))["pages"]
        finally:
            client.forget(nom_id)
            client.forget(map_id)
        return results, pages


__all__ = ["HvCalls", "Result", "chunks"]
