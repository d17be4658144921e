"""The hv side of the wire: one session per connection, and the two Unix sockets.

A session reads frames, checks them with `protocol.parse_request`, and runs the operation
against its domain. Everything but guest `read`/`write` completes before the next frame is
read, so replies to those come in request order and an event a request causes follows its
reply. A guest access makes its first attempt in order too; one that must wait (a paused
vCPU, a full ring) goes on as a task of the session (one per vCPU at most), so a vCPU paused
on a page-in does not hold up the others: their replies may come out of order (§3).
"""

from __future__ import annotations

import functools
import os

import trio

from protocol import SOCKET_MODES, SOCKET_ROLES
from transport import open_connection, serve_unix

from .hypervisor import Hypervisor
from .session_guest import GuestRequests
from .session_privcmd import PrivcmdRequests

SOCKETS = ("privcmd.sock", "guest.sock")


class _Session(GuestRequests, PrivcmdRequests):
    """One connection: its role, its domain, the holds it took, its guest accesses."""


async def serve_connection(hv: Hypervisor, stream: trio.abc.Stream, socket: str) -> None:
    """Serve one connection on `socket` until it closes; nothing the peer sends raises."""
    if socket not in SOCKET_ROLES:
        raise ValueError(f"unknown socket {socket!r}")
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
