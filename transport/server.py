"""A Unix-socket server that serves many connections and isolates each one's failure."""

from __future__ import annotations

import contextlib
import os
import socket as _stdlib_socket
from collections.abc import Awaitable, Callable
from typing import Final

import structlog
import trio

log = structlog.get_logger("transport.server")

#: Pending connections the kernel may queue before `accept`.
BACKLOG: Final = 128

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def serve_unix(
    path: str,
    handler: Handler,
    *,
    mode: int,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on `path` with file mode `mode` and run `handler` for each connection.

    A handler that raises is logged and its stream closed; the server and every other
    connection go on. A stale socket file at `path` is replaced. The socket file is removed
    when the server stops.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = trio.socket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        # Set the mode before listen(): no peer can connect while the file is still open.
        os.chmod(path, mode)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    listener = trio.SocketListener(sock)

    async def isolated(stream: trio.SocketStream) -> None:
        try:
            await handler(stream)
        except Exception:
            log.exception("conn.crashed", path=path)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    try:
        await trio.serve_listeners(isolated, [listener], task_status=task_status)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
