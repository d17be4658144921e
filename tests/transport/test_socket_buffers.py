"""Socket buffers (transport/sockbuf.py). Both ends of a Unix-socket connection ask for a
send buffer that holds a batch (`open_connection`: hv's sessions and every client); a
64-page `map` reply did not fit in Linux's default and went out in pieces, each waiting
for the socket to drain. A socket connection reads into one receive buffer of its own
instead of a new allocation per read."""

from __future__ import annotations

import functools
import socket
from pathlib import Path

import pytest
import trio
import trio.testing

from transport import ConnectionClosed, open_client, open_connection, serve_unix
from transport.sockbuf import RECEIVE_BUFFER, SEND_BUFFER, chunk_receiver, widen_send_buffer

WMEM_MAX = Path("/proc/sys/net/core/wmem_max")


def expected() -> int:
    """What Linux grants for SEND_BUFFER: twice the request, capped at twice wmem_max."""
    cap = int(WMEM_MAX.read_text())
    return 2 * min(SEND_BUFFER, cap)


async def test_server_and_client_ends_get_the_wide_buffer(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    seen: list[int] = []
    done = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        async with open_connection(stream):
            seen.append(stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
            done.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(serve_unix, path, handler, mode=0o600))
            stream = await trio.open_unix_socket(path)
            async with open_client(stream, "test"):
                client_buf = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
                await done.wait()
            nursery.cancel_scope.cancel()
    assert seen == [expected()]
    assert client_buf == expected()
    # Without the call the default stays (so the test above sees the call, not a default).
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        default = raw.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    finally:
        raw.close()
    if expected() > default:
        assert client_buf > default


def test_memory_streams_are_left_alone() -> None:
    a, _b = trio.testing.memory_stream_pair()
    widen_send_buffer(a)  # nothing to widen: must not raise


async def test_a_socket_is_read_into_one_buffer_and_frames_arrive_whole() -> None:
    """Over a socket, every read lands in the same receive buffer (no allocation per
    read), and what the decoder made of it is right: a 64-page reply, and small frames
    before and after it, several per read."""
    a, b = trio.socket.socketpair()
    sa, sb = trio.SocketStream(a), trio.SocketStream(b)
    receive = chunk_receiver(sb, 64 * 1024)
    chunks = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sa.send_all, b"x" * (RECEIVE_BUFFER + 5000))
            got = 0
            while got < RECEIVE_BUFFER + 5000:
                chunk = await receive()
                assert isinstance(chunk, memoryview) and chunk == b"x" * len(chunk)
                chunks.append(chunk.obj)
                got += len(chunk)
        assert len({id(c) for c in chunks}) == 1 and len(chunks) >= 2
        pages = [bytes([i]) * 4096 for i in range(64)]
        async with open_connection(sa) as tx, open_connection(sb) as rx:
            for n in range(3):
                tx.send_nowait({"id": n, "small": True})
                tx.send_nowait({"id": n, "pages": pages})
            for n in range(3):
                assert await rx.receive() == {"id": n, "small": True}
                assert await rx.receive() == {"id": n, "pages": pages}
            await sa.aclose()
            with pytest.raises(ConnectionClosed):
                await rx.receive()
