"""Fewer wake-ups per message: several messages in one write (`send(*msgs)`), replies
held and sent together (`cork`), messages already read served without another read
(`receive_buffered`). Each keeps the order of the plain path. The client side
(`Client.send_requests`, `Client.take_events`) is tested in test_transport.py."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel

from protocol import encode_frame
from transport import ConnectionClosed, open_connection


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
