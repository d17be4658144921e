"""The hv side of the wire: one session per connection, and the two Unix sockets.

A session reads frames, checks them with `protocol.parse_request`, and runs the operation
against its domain. Everything but guest `read`/`write` completes before the next frame is
read, so replies to those come in request order and an event a request causes follows its
reply. A guest access makes its first attempt in order too; one that must wait (a paused
vCPU, a full ring) goes on as a task of the session (one per vCPU at most), so a vCPU paused
on a page-in does not hold up the others: their replies may come out of order (§3).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket as _socket
from typing import Final

import trio

from protocol import SOCKET_MODES, SOCKET_ROLES
from transport import open_connection, serve_unix

from .hypervisor import Hypervisor
from .session_guest import GuestRequests
from .session_privcmd import PrivcmdRequests

SOCKETS = ("privcmd.sock", "guest.sock")

#: SO_SNDBUF asked for each connection's socket (the kernel doubles it, within
#: net.core.wmem_max). A 64-page `map` reply (262 KiB) is more than a Unix socket's default
#: buffer (208 KiB) takes: its rest went through the writer task, one more wake-up, send
#: and epoll registration per batch, about 2 us of hv's CPU per page paged out (alternated
#: runs of cpu_pageout.py). With room for several replies, one write takes the whole burst.
#: What the kernel holds still counts against nothing else: a peer that does not read fills
#: it, then the connection's bounded queue, and is dropped as before.
SEND_BUFFER: Final = 1 << 20


class _Session(GuestRequests, PrivcmdRequests):
    """One connection: its role, its domain, the holds it took, its guest accesses."""


async def serve_connection(hv: Hypervisor, stream: trio.abc.Stream, socket: str) -> None:
    """Serve one connection on `socket` until it closes; nothing the peer sends raises."""
    if socket not in SOCKET_ROLES:
        raise ValueError(f"unknown socket {socket!r}")
    if isinstance(stream, trio.SocketStream):
        with contextlib.suppress(OSError):  # a smaller buffer only costs wake-ups
            stream.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, SEND_BUFFER)
    async with open_connection(stream) as conn:
        session = _Session(hv, conn, socket)
        try:
            async with trio.open_nursery() as nursery:
                session.nursery = nursery
                with session.scope:
                    await session.run()
                nursery.cancel_scope.cancel()
        finally:
            session.cleanup()
            session.log.debug("conn.closed")


async def serve(
    hv: Hypervisor,
    run_dir: str,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on both sockets of `run_dir`; started() once both listen; sockets removed on exit."""
    async with trio.open_nursery() as nursery:
        for name in SOCKETS:
            path = os.path.join(run_dir, name)
            handler = functools.partial(hv.serve_stream, socket=name)
            await nursery.start(
                functools.partial(serve_unix, path, handler, mode=SOCKET_MODES[name])
            )
        task_status.started()


__all__ = ["SOCKETS", "serve", "serve_connection"]
