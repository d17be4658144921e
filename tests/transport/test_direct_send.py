"""Connection over a real socket: frames written straight into an idle socket's buffer keep
their order with frames the writer task still holds, and a peer that does not read is
still dropped."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel

from transport import ConnectionClosed, open_connection


def _socket_streams() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def test_order_is_kept_across_direct_and_queued_frames() -> None:
    with trio.fail_after(30):
        a, b = _socket_streams()
        # Sizes around the socket buffer: some frames go straight out, some only in part
        # (the rest through the writer), some wait behind those, while the peer reads.
        sizes = [10, 300_000, 5, 70_000, 1, 1, 500_000, 3, 200_000, 2] * 10
        got: list[int] = []
        async with open_connection(a) as sender, open_connection(b) as receiver:

            async def receive_all() -> None:
                for _ in sizes:
                    msg = await receiver.receive()
                    assert msg["data"] == bytes([msg["i"] % 251]) * sizes[msg["i"]]
                    got.append(msg["i"])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive_all)
                for i, size in enumerate(sizes):
                    sender.send_nowait({"i": i, "data": bytes([i % 251]) * size})
                    if i % 3 == 0:
                        await trio.lowlevel.checkpoint()  # the peer reads some meanwhile
        assert got == list(range(len(sizes)))


async def test_peer_that_does_not_read_is_dropped_over_a_socket() -> None:
    with trio.fail_after(20):
        a, _b = _socket_streams()  # nobody ever reads _b
        async with open_connection(a, max_queued=4) as conn:
            with pytest.raises(ConnectionClosed, match="not reading"):
                for _ in range(10_000):
                    conn.send_nowait({"ev": "target", "data": bytes(65536)})
                    await trio.lowlevel.checkpoint()
            assert conn.closed
        await _b.aclose()


async def test_send_after_close_raises_and_writes_nothing() -> None:
    with trio.fail_after(10):
        a, b = _socket_streams()
        async with open_connection(a) as conn:
            conn.send_nowait({"n": 1})
        assert a.socket.fileno() == -1
        with pytest.raises(ConnectionClosed):
            conn.send_nowait({"n": 2})
        async with open_connection(b) as receiver:
            assert await receiver.receive() == {"n": 1}
            with pytest.raises(ConnectionClosed):
                await receiver.receive()
