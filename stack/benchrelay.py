"""The relay floor of `xpemu bench`: a populate's four one-way messages, no paging work.

A caller's `read` goes caller -> relay -> backend -> relay -> caller over Unix sockets, with
the project's codec and transport, as a page-in goes guest -> hv (`read`) -> pager
(`mem_event`) -> hv (`prep` and `resume`, one write) -> guest (the reply); hv's replies to
the `prep` and `resume` are a populate's fifth and sixth messages, off the guest's path.
The relay looks nothing up and the backend reads no store: what is left is the physical
floor of a populate with separate processes, where the echo (caller -> echo -> caller) is
the floor of two messages.

Both servers are written as hv serves a connection: every request already read is handled
before the next read, and the replies to one burst go out as one write (`cork`). The relay
forwards every request at once on its one connection to the backend, under an id of its
own, and matches the backend's replies back to their callers by that id: many requests are
in flight at once, as populates of many vCPUs are (no task per request, as hv has none).

Entry points: `python -m stack.benchlib --backend PATH` and
`python -m stack.benchlib --relay PATH BACKEND_PATH`; each prints "ready" once it serves.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import trio

from protocol import PAGE_SIZE, VERSION, make_request, ok_reply, parse_reply, parse_request
from transport import Client, Connection, ConnectionClosed, open_connection, open_unix_client
from transport.server import serve_unix

#: Seconds a floor process may take to start, and to stop once told to.
START_TIMEOUT: Final = 30
STOP_TIMEOUT: Final = 10


def _hello_reply(rid: int, instance: str) -> dict[str, Any]:
    reply = ok_reply(rid, v=VERSION, domid=1, nr_gfns=1, vcpus=1, page_size=PAGE_SIZE)
    return {**reply, "ring_size": 0, "instance": instance}


def _parse(msg: dict[str, Any]) -> Any:
    return parse_request(msg, "guest" if msg.get("op") != "hello" else msg.get("role", ""))


async def _serve_bursts(
    conn: Connection, out: Connection, handle: Callable[[dict[str, Any]], None]
) -> None:
    """`handle` each message of `conn` until it closes, as hv serves: every message already
    read before the next read, and what they send on `out` as one write."""
    while True:
        try:
            msg: dict[str, Any] | None = await conn.receive()
        except ConnectionClosed:
            return
        out.cork()
        try:
            while msg is not None:
                handle(msg)
                msg = conn.receive_buffered()
        finally:
            out.uncork()


# --- the backend -------------------------------------------------------------------------


async def _backend_handler(stream: trio.SocketStream) -> None:
    """The echo's replies, a burst at a time, each read reply marked with this pid."""
    pid = os.getpid()
    async with open_connection(stream) as conn:

        def answer(msg: dict[str, Any]) -> None:
            req = _parse(msg)
            if req.op == "hello":
                conn.send_nowait(_hello_reply(req.id, "backend"))
            else:
                conn.send_nowait(ok_reply(req.id, data=bytes(req.args["len"]), backend=pid))

        await _serve_bursts(conn, conn, answer)


async def _serve_backend(path: str) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_unix, path, _backend_handler, mode=0o600))
        print("ready", flush=True)  # the parent waits for this line, not for the file


# --- the relay ---------------------------------------------------------------------------


class _Relay:
    """Callers' requests forwarded on one backend connection, replies matched by id."""

    def __init__(self, backend: Connection) -> None:
        self.backend = backend
        self._ids = itertools.count(1)
        #: The relay's id of each request in flight -> (the caller's connection, its id).
        self.waiting: dict[int, tuple[Connection, int]] = {}

    async def serve_caller(self, stream: trio.SocketStream) -> None:
        # A burst of requests goes to the backend as one write, as hv's one `mem_event`.
        async with open_connection(stream) as conn:
            await _serve_bursts(conn, self.backend, partial(self._forward, conn))

    def _forward(self, conn: Connection, msg: dict[str, Any]) -> None:
        req = _parse(msg)
        if req.op == "hello":
            conn.send_nowait(_hello_reply(req.id, "relay"))
            return
        rid = next(self._ids)
        self.waiting[rid] = (conn, req.id)
        self.backend.send_nowait({**msg, "id": rid})

    async def read_backend(self) -> None:
        """Hand each backend reply to its caller, a burst's replies to one caller as one
        write; returns when the backend is gone."""
        while True:
            try:
                msg: dict[str, Any] | None = await self.backend.receive()
            except ConnectionClosed:
                return
            corked: list[Connection] = []
            while msg is not None:
                conn, caller_id = self.waiting.pop(msg["id"])
                reply = parse_reply("read", msg)
                if conn not in corked:
                    conn.cork()
                    corked.append(conn)
                with contextlib.suppress(ConnectionClosed):  # that caller is gone; others go on
                    conn.send_nowait({**reply, "id": caller_id})
                msg = self.backend.receive_buffered()
            for conn in corked:
                with contextlib.suppress(ConnectionClosed):
                    conn.uncork()


async def _serve_relay(path: str, backend_path: str) -> None:
    stream = await trio.open_unix_socket(backend_path)
    async with open_connection(stream) as backend:
        backend.send_nowait(make_request("hello", 0, "guest", v=VERSION, role="guest", domid=1))
        if not (await backend.receive()).get("ok"):
            raise SystemExit("relay: the backend refused the hello")
        relay = _Relay(backend)
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_unix, path, relay.serve_caller, mode=0o600))
            print("ready", flush=True)
            await relay.read_backend()
            nursery.cancel_scope.cancel()  # the backend is gone: so is the relay


def floor_server_main(argv: Sequence[str]) -> None:
    """`--backend PATH` or `--relay PATH BACKEND_PATH` (`python -m stack.benchlib ...`)."""
    if argv[0] == "--backend" and len(argv) == 2:
        trio.run(_serve_backend, argv[1])
    elif argv[0] == "--relay" and len(argv) == 3:
        trio.run(_serve_relay, argv[1], argv[2])
    else:
        raise SystemExit("usage: python -m stack.benchlib [--backend PATH | --relay PATH BACKEND]")


# --- the parent's side -------------------------------------------------------------------


@asynccontextmanager
async def floor_process(argv: Sequence[str]) -> AsyncIterator[trio.Process]:
    """A `python -m stack.benchlib ARGV` process, once it says "ready"; stopped (SIGTERM,
    then SIGKILL) and reaped when the block ends, however it ends."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "stack.benchlib", *argv], stdout=subprocess.PIPE
    )
    try:
        with trio.fail_after(START_TIMEOUT):
            assert proc.stdout is not None
            said = b""
            while not said.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(16)
                if not chunk:
                    raise RuntimeError(f"stack.benchlib {' '.join(argv)} did not start")
                said += chunk
            if said != b"ready\n":
                raise RuntimeError(f"stack.benchlib {' '.join(argv)} said {said!r}")
        yield proc
    finally:
        with trio.CancelScope(shield=True):
            proc.terminate()
            with trio.move_on_after(STOP_TIMEOUT):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                with trio.move_on_after(STOP_TIMEOUT):
                    await proc.wait()


@dataclass
class RelayFloor:
    """A client of the relay, said hello, and the pids whose CPU time a round trip costs."""

    client: Client
    pids: dict[str, int]


@asynccontextmanager
async def open_relay() -> AsyncIterator[RelayFloor]:
    """A backend and a relay in front of it, each its own process, and a client of the
    relay; both processes stopped and reaped at the end."""
    with tempfile.TemporaryDirectory(prefix="xpemu-relay-") as tmp:
        backend_path = os.path.join(tmp, "backend.sock")
        relay_path = os.path.join(tmp, "relay.sock")
        async with (
            floor_process(["--backend", backend_path]) as backend,
            floor_process(["--relay", relay_path, backend_path]) as relay,
            open_unix_client(relay_path, "guest") as client,
        ):
            with trio.fail_after(START_TIMEOUT):
                await client.hello(1)
            yield RelayFloor(client, {"relay": relay.pid, "backend": backend.pid})
