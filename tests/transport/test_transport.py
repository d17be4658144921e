"""Connection, Client and the Unix server, over memory streams and real sockets."""

from __future__ import annotations

import io
import json
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from protocol import (
    Errno,
    OpError,
    RemoteProtocolError,
    RequestError,
    encode_frame,
    error_reply,
    make_event,
    ok_reply,
    parse_request,
)
from transport import (
    Client,
    ConnectionClosed,
    configure_logging,
    open_client,
    open_connection,
    open_unix_client,
    serve_unix,
)

HELLO = {"v": 1, "domid": 1, "nr_gfns": 8, "vcpus": 2, "page_size": 4096, "ring_size": 4}


async def toy_server(stream: trio.abc.Stream) -> None:
    """Answers hello; answers `nominate` of gfn g after the reply to a later request if g == 0."""
    async with open_connection(stream) as conn:
        held: list[int] = []
        while True:
            try:
                msg = await conn.receive()
            except ConnectionClosed:
                return
            try:
                req = parse_request(msg, "pager")
            except RequestError as exc:
                conn.send_nowait(error_reply(msg.get("id"), exc.errno, exc.msg))
                continue
            if req.op == "hello":
                conn.send_nowait(ok_reply(req.id, **HELLO, instance="t", epoch=1))
                conn.send_nowait(make_event("target", tot_pages=3))
            elif req.args["gfns"] == [99]:
                conn.send_nowait(error_reply(req.id, Errno.EBUSY, "held"))
            elif req.args["gfns"] == [0]:
                held.append(req.id)  # answered after the next request: out of order
            else:
                conn.send_nowait(ok_reply(req.id, results=[0] * len(req.args["gfns"])))
                for rid in held:
                    conn.send_nowait(ok_reply(rid, results=["EBUSY"]))
                held.clear()


@asynccontextmanager
async def toy_client() -> AsyncIterator[Client]:
    """A pager client of `toy_server` over a memory stream (no hello said yet)."""
    a, b = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(toy_server, b)
        async with open_client(a, "pager") as client:
            yield client
        nursery.cancel_scope.cancel()


async def test_client_matches_replies_out_of_order() -> None:
    with trio.fail_after(5):
        async with toy_client() as client:
            info = await client.hello(1)
            assert info["epoch"] == 1 and info["instance"] == "t"
            assert await client.events.receive() == ("target", {"tot_pages": 3})
            order: list[str] = []

            async def slow() -> None:
                reply = await client.request("nominate", gfns=[0])
                order.append(f"slow:{reply['results']}")

            async with trio.open_nursery() as inner:
                inner.start_soon(slow)
                await trio.testing.wait_all_tasks_blocked()
                fast = await client.call("nominate", gfns=[1, 2])
                order.append(f"fast:{fast['results']}")
            # Asked first, answered second: matched by id all the same.
            assert order == ["fast:[0, 0]", "slow:['EBUSY']"]


async def test_send_requests_then_replies_in_any_order_of_waiting() -> None:
    with trio.fail_after(5):
        async with toy_client() as client:
            await client.hello(1)
            ids = await client.send_requests(
                [("evict", {"gfns": [1]}), ("nominate", {"gfns": [2, 3]})]
            )
            # Waiting for the second first is fine: the first's reply is kept.
            assert (await client.call_reply(ids[1]))["results"] == [0, 0]
            assert (await client.call_reply(ids[0]))["results"] == [0]
            # A forgotten request's late reply is no protocol error.
            (lost,) = await client.send_requests([("evict", {"gfns": [3]})])
            client.forget(lost)
            assert (await client.call("evict", gfns=[4]))["results"] == [0]


async def test_take_events_keeps_order_with_events_already_queued() -> None:
    """Events read before `take_events` are handed over first, then each as it is read."""
    with trio.fail_after(5):
        a, b = trio.testing.memory_stream_pair()
        seen: list[int] = []

        async def server(stream: trio.abc.Stream) -> None:
            async with open_connection(stream) as conn:
                hello = await conn.receive()
                for i in range(3):  # before the hello reply: queued when hello returns
                    conn.send_nowait(make_event("target", tot_pages=i))
                conn.send_nowait(ok_reply(hello["id"], **HELLO, instance="t", epoch=1))
                req = await conn.receive()
                conn.send_nowait(ok_reply(req["id"], results=[0]))
                conn.send_nowait(make_event("target", tot_pages=100))
                with pytest.raises(ConnectionClosed):
                    await conn.receive()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server, b)
            async with open_client(a, "pager") as client:
                await client.hello(1)
                client.take_events(lambda ev, fields: seen.append(fields["tot_pages"]))
                assert seen == [0, 1, 2]
                await client.call("evict", gfns=[1])
                await trio.testing.wait_all_tasks_blocked()
                assert seen == [0, 1, 2, 100]


async def test_call_raises_operror_with_errno() -> None:
    with trio.fail_after(5):
        async with toy_client() as client:
            await client.hello(1)
            with pytest.raises(OpError) as info:
                await client.call("nominate", gfns=[99])
            assert info.value.errno == Errno.EBUSY and info.value.msg == "held"
            reply = await client.request("nominate", gfns=[99])
            assert reply == {"id": reply["id"], "ok": False, "err": "EBUSY", "msg": "held"}


async def test_connection_lost_wakes_pending_requests() -> None:
    with trio.fail_after(5):
        a, b = trio.testing.memory_stream_pair()
        async with open_client(a, "pager") as client:
            async with trio.open_nursery() as nursery:

                async def ask() -> None:
                    with pytest.raises(ConnectionClosed):
                        await client.call("nominate", gfns=[1])

                nursery.start_soon(ask)
                await trio.testing.wait_all_tasks_blocked()
                await b.aclose()


async def test_garbage_from_server_is_a_remote_error() -> None:
    with trio.fail_after(5):
        a, b = trio.testing.memory_stream_pair()
        async with open_client(a, "pager") as client:
            await b.send_all(b"\xff\xff\xff\xff")  # length over MAX_FRAME
            with pytest.raises(ConnectionClosed, match="MAX_FRAME"):
                await client.call("nominate", gfns=[1])


async def test_peer_that_does_not_read_is_dropped() -> None:
    with trio.fail_after(5):
        a, _b = trio.testing.lockstep_stream_pair()  # nobody ever reads _b
        async with open_connection(a, max_queued=4) as conn:
            with pytest.raises(ConnectionClosed, match="not reading"):
                for _ in range(100):
                    conn.send_nowait({"ev": "target", "tot_pages": 1})
                    await trio.testing.wait_all_tasks_blocked()
            assert conn.closed


async def test_receive_reports_framing_errors() -> None:
    with trio.fail_after(5):
        a, b = trio.testing.memory_stream_pair()
        async with open_connection(a) as conn:
            await b.send_all(encode_frame({"ok": 1}) + b"\x00\x00\x00\x00")
            assert await conn.receive() == {"ok": 1}
            with pytest.raises(RemoteProtocolError) as info:
                await conn.receive()
            assert info.value.errno == Errno.EPROTO


async def test_unix_server_isolates_each_connection(tmp_path: Path) -> None:
    path = str(tmp_path / "t.sock")
    seen: list[str] = []

    async def handler(stream: trio.SocketStream) -> None:
        async with open_connection(stream) as conn:
            msg = await conn.receive()
            if msg.get("crash"):
                raise ValueError("handler bug")  # must not take the server down
            seen.append(msg["op"])
            await conn.send(ok_reply(msg["id"], **HELLO, instance="u"))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve_unix(path, handler, mode=0o600, task_status=task_status)
            )
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            bad = await trio.open_unix_socket(path)
            await bad.send_all(encode_frame({"crash": True}))
            assert await bad.receive_some(10) == b""  # closed by the server
            await bad.aclose()
            async with open_unix_client(path, "control") as client:
                info = await client.hello()
                assert info["instance"] == "u"
            assert seen == ["hello"]
            nursery.cancel_scope.cancel()
        assert not await trio.Path(path).exists()


def test_configure_logging_json_binds_proc(structlog_restored: None) -> None:
    out = io.StringIO()
    configure_logging("hv", json=True, stream=out, domid=1)
    import structlog

    structlog.get_logger().info("page.evicted", gfn=5)
    line = json.loads(out.getvalue().splitlines()[-1])
    assert line["event"] == "page.evicted" and line["proc"] == "hv" and line["domid"] == 1
    assert line["level"] == "info" and line["timestamp"].endswith("Z")


async def test_reply_to_a_cancelled_request_is_dropped_quietly() -> None:
    with trio.fail_after(5):
        async with toy_client() as client:
            await client.hello(1)
            with trio.move_on_after(0.05) as scope:
                await client.call("nominate", gfns=[0])  # held by the server
            assert scope.cancelled_caught
            # The late reply to the abandoned request must not break the connection.
            fast = await client.call("nominate", gfns=[1])
            assert fast["results"] == [0]
            again = await client.call("nominate", gfns=[2])
            assert again["results"] == [0]
