"""Connection over a real socket: frames written straight into an idle socket's buffer keep
their order with frames the writer task still holds, and a peer that does not read is
still dropped."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel

from transport import Connection, ConnectionClosed, open_connection
from transport import connection as connection_module


def _socket_streams() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def _receive_all(receiver: Connection, sizes: list[int], got: list[int]) -> None:
    """Receive a message per size, each `i` with `sizes[i]` bytes of `i % 251`."""
    for _ in sizes:
        msg = await receiver.receive()
        assert msg["data"] == bytes([msg["i"] % 251]) * sizes[msg["i"]]
        got.append(msg["i"])


async def test_order_is_kept_across_direct_and_queued_frames() -> None:
    with trio.fail_after(30):
        a, b = _socket_streams()
        # Sizes around the socket buffer: some frames go straight out, some only in part
        # (the rest through the writer), some wait behind those, while the peer reads.
        sizes = [10, 300_000, 5, 70_000, 1, 1, 500_000, 3, 200_000, 2] * 10
        got: list[int] = []
        async with open_connection(a) as sender, open_connection(b) as receiver:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_receive_all, receiver, sizes, got)
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


async def test_corked_frames_go_out_in_one_writev_and_the_rest_in_order() -> None:
    """Uncork hands the held frames to the socket as they are (`os.writev`), beyond what
    its buffer takes: the writer task sends the rest, cut inside any frame, in order."""
    with trio.fail_after(30):
        a, b = _socket_streams()
        sizes = [5, 700_000, 3, 100_000, 1, 64 * 4096 + 40, 2] * 4
        got: list[int] = []
        async with open_connection(a) as sender, open_connection(b) as receiver:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_receive_all, receiver, sizes, got)
                for start in range(0, len(sizes), 7):
                    sender.cork()
                    for i in range(start, start + 7):
                        sender.send_nowait({"i": i, "data": bytes([i % 251]) * sizes[i]})
                    sender.uncork()
                    await trio.lowlevel.checkpoint()
        assert got == list(range(len(sizes)))


@pytest.mark.parametrize("taken", [0, 1, 3, 4, 5, 9, 10, 11, 14, 15])
def test_what_is_left_after_a_partial_write(taken: int) -> None:
    class _Takes:
        def try_send_some(self, data: bytes) -> int:
            return min(taken, len(data))

    conn = connection_module.Connection(_Takes())  # type: ignore[arg-type]  # only its sender is used
    frames = [b"abcd", b"e", b"fghij", b"klmno"]
    assert conn._write_now(frames) == b"".join(frames)[taken:]
