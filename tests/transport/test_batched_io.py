"""Fewer wake-ups per message: several messages in one write (`send(*msgs)`,
`Client.send_requests`), replies held and sent together (`cork`), messages already read
served without another read (`receive_buffered`), events handed over as they are read
(`Client.take_events`). Each keeps the order of the plain path."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.lowlevel

from protocol import encode_frame, ok_reply
from transport import Client, ConnectionClosed, open_connection
from transport.client import open_client


def _socket_streams() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


class _CountingStream(trio.abc.Stream):
    """A memory stream that counts the writes reaching it."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_send_of_several_messages_is_one_write_in_order() -> None:
    with trio.fail_after(10):
        a, b = trio.testing.memory_stream_pair()
        counting = _CountingStream(a)
        async with open_connection(counting) as sender, open_connection(b) as receiver:
            await sender.send({"n": 1}, {"n": 2}, {"n": 3})
            assert [(await receiver.receive())["n"] for _ in range(3)] == [1, 2, 3]
        assert counting.writes[0] == b"".join(encode_frame({"n": n}) for n in (1, 2, 3))


async def test_cork_holds_frames_and_uncork_sends_them_as_one_write() -> None:
    with trio.fail_after(10):
        a, b = _socket_streams()
        async with open_connection(a) as sender, open_connection(b) as receiver:
            sender.cork()
            for n in range(5):
                sender.send_nowait({"n": n})
            # Nothing left while corked: the peer has no complete frame yet.
            with trio.move_on_after(0.05):
                await receiver.receive()
                pytest.fail("a corked frame was sent")
            sender.uncork()
            got = [(await receiver.receive())["n"] for _ in range(5)]
            assert got == list(range(5))
            # All five came in one read: they were one write.
            assert receiver.receive_buffered() is None


async def test_receive_buffered_returns_only_what_was_already_read() -> None:
    with trio.fail_after(10):
        a, b = _socket_streams()
        async with open_connection(a) as sender, open_connection(b) as receiver:
            await sender.send({"n": 1}, {"n": 2})
            assert (await receiver.receive())["n"] == 1
            assert receiver.receive_buffered() == {"n": 2}
            assert receiver.receive_buffered() is None  # never reads the socket
            await sender.send({"n": 3})
            assert (await receiver.receive())["n"] == 3


async def test_cork_is_skipped_towards_a_peer_that_is_behind() -> None:
    """A peer that does not read still fills the bounded queue frame by frame and is
    dropped, corked or not."""
    with trio.fail_after(20):
        a, _b = _socket_streams()
        async with open_connection(a, max_queued=4) as conn:
            with pytest.raises(ConnectionClosed, match="not reading"):
                for _ in range(10_000):
                    conn.cork()
                    for _ in range(8):
                        conn.send_nowait({"data": bytes(65536)})
                    conn.uncork()
                    await trio.lowlevel.checkpoint()
        await _b.aclose()


async def _echo_server(stream: trio.abc.Stream, events_first: int = 0) -> None:
    async with open_connection(stream) as conn:
        for i in range(events_first):
            conn.send_nowait({"ev": "target", "domid": 1, "tot_pages": i})
        while True:
            try:
                msg = await conn.receive()
            except ConnectionClosed:
                return
            if msg["op"] == "hello":
                conn.send_nowait(
                    ok_reply(
                        msg["id"],
                        v=1,
                        domid=1,
                        nr_gfns=8,
                        vcpus=1,
                        page_size=4096,
                        ring_size=8,
                        instance="x",
                        epoch=1,
                    )
                )
                continue
            conn.send_nowait(ok_reply(msg["id"], results=[0] * len(msg["gfns"])))
            conn.send_nowait({"ev": "target", "domid": 1, "tot_pages": 100 + msg["id"]})


async def test_send_requests_then_replies_in_any_order_of_waiting() -> None:
    with trio.fail_after(10):
        a, b = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_echo_server, b)
            async with open_client(a, "pager") as client:
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
                assert (await client.call("evict", gfns=[4]))["results"] != []
            nursery.cancel_scope.cancel()


async def test_take_events_keeps_order_with_events_already_queued() -> None:
    with trio.fail_after(10):
        a, b = trio.testing.memory_stream_pair()
        seen: list[int] = []

        def on_event(ev: str, fields: dict[str, Any]) -> None:
            assert ev == "target"
            seen.append(fields["tot_pages"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_echo_server, b, 3)
            async with open_client(a, "pager") as client:
                client_: Client = client
                await client_.hello(1)  # the 3 events came before the hello reply
                client_.take_events(on_event)
                assert seen == [0, 1, 2]
                reply = await client_.call("evict", gfns=[1])
                await trio.testing.wait_all_tasks_blocked()
                assert seen == [0, 1, 2, 100 + reply["id"]]
            nursery.cancel_scope.cancel()
