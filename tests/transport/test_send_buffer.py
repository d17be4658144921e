"""Both ends of a Unix-socket connection ask for a send buffer that holds a batch
(transport/sockbuf.py): hv's accepted streams (`serve_unix`) and every client
(`open_client`). A 64-page `map` reply did not fit in Linux's default and went out in
pieces, each waiting for the socket to drain."""

from __future__ import annotations

import functools
import socket
from pathlib import Path

import trio
import trio.testing

from transport import open_client, serve_unix
from transport.sockbuf import SEND_BUFFER, widen_send_buffer

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
