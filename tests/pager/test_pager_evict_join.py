"""`HvCalls.send_joined`, through `evict`: the requests of batches released together go
out in one write to hv, each with its own reply."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.lowlevel

from pager.hvcalls import HvCalls
from protocol import MAX_LIST, ok_reply
from transport import Client, Connection, open_client, open_connection
from transport import connection as connection_module


def _result(gfn: int) -> int | str:
    return "EBUSY" if gfn % 3 == 0 else 0


async def _hv(conn: Connection, served: list[list[int]]) -> None:
    """Answer each evict with a result per gfn (EBUSY for multiples of 3)."""
    while True:
        msg = await conn.receive()
        assert msg["op"] == "evict"
        served.append(msg["gfns"])
        conn.send_nowait(ok_reply(msg["id"], results=[_result(g) for g in msg["gfns"]]))


@asynccontextmanager
async def _pager_and_hv(served: list[list[int]]) -> AsyncIterator[tuple[Client, HvCalls]]:
    """A pager's client and its HvCalls over a socket pair, a scripted hv (`_hv`) on the
    other end; hv stops with the block."""
    a, b = trio.socket.socketpair()
    async with (
        open_client(trio.SocketStream(a), "pager") as client,
        open_connection(trio.SocketStream(b)) as theirs,
        trio.open_nursery() as outer,
    ):
        outer.start_soon(_hv, theirs, served)
        yield client, HvCalls(client)
        outer.cancel_scope.cancel()


async def _run(
    batches: Sequence[Sequence[int]], monkeypatch: pytest.MonkeyPatch
) -> tuple[list[list[Any]], list[list[int]], list[int]]:
    """Evict each batch from its own task, all started in one scheduler pass: their
    results, what hv served, and the number of evict requests in each write."""
    writes: list[int] = []
    write_some = connection_module._write_some

    def counting(sock: Any, frames: list[bytes]) -> int:
        writes.append(sum(frame.count(b"evict") for frame in frames))
        return write_some(sock, frames)

    monkeypatch.setattr(connection_module, "_write_some", counting)
    results: list[list[Any]] = [[] for _ in batches]
    served: list[list[int]] = []
    with trio.fail_after(10):
        async with _pager_and_hv(served) as (_, hv):

            async def one(i: int) -> None:
                results[i] = await hv.evict(batches[i])

            async with trio.open_nursery() as nursery:
                for i in range(len(batches)):
                    nursery.start_soon(one, i)
    return results, served, [w for w in writes if w]


async def test_evicts_released_together_share_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    batches = [list(range(k * 64, k * 64 + 64)) for k in range(4)]
    results, served, writes = await _run(batches, monkeypatch)
    assert writes == [4]  # one write, one wake-up of hv, for the four batches
    assert sorted(map(tuple, served)) == sorted(map(tuple, batches))  # a request each
    for gfns, got in zip(batches, results, strict=True):
        assert got == [_result(g) for g in gfns]  # each batch its own results


async def test_a_lone_evict_and_a_long_one(monkeypatch: pytest.MonkeyPatch) -> None:
    results, served, writes = await _run([[7, 9]], monkeypatch)
    assert results == [[_result(7), _result(9)]] and served == [[7, 9]] and writes == [1]
    long = list(range(MAX_LIST + 5))
    results, served, _ = await _run([long], monkeypatch)
    assert results == [[_result(g) for g in long]]
    assert served == [long[:MAX_LIST], long[MAX_LIST:]]  # in the protocol's chunks


async def test_an_evict_cancelled_while_it_holds_the_frames() -> None:
    """The first evict is cancelled after its request was held for the others: what it
    held still goes out (the connection is not left corked), its reply is dropped, and
    the next evict is answered."""
    served: list[list[int]] = []
    with trio.fail_after(10):
        async with _pager_and_hv(served) as (client, hv):
            send = client.send_requests
            with trio.CancelScope() as first:

                async def send_then_cancel(*args: Any, **kw: Any) -> list[int]:
                    rids = await send(*args, **kw)
                    first.cancel()  # lands on the checkpoint that waits for the others
                    return rids

                client.send_requests = send_then_cancel  # type: ignore[method-assign]  # this call only
                await hv.evict([1, 2])
            client.send_requests = send  # type: ignore[method-assign]  # restored
            assert first.cancelled_caught
            assert await hv.evict([4, 5]) == [0, 0]
            assert not client._pending  # the cancelled request's reply was not waited for
    assert served == [[1, 2], [4, 5]]
