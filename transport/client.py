"""The client side: requests matched to replies by `id`, events on a channel."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from protocol import (
    VERSION,
    OpError,
    RemoteProtocolError,
    make_request,
    parse_event,
    parse_reply,
)

from .connection import Connection, ConnectionClosed, _single, open_connection


class _Pending:
    __slots__ = ("done", "op", "reply")

    def __init__(self, op: str) -> None:
        self.op = op
        self.done = trio.Event()
        self.reply: dict[str, Any] | BaseException | None = None


class Client:
    """Sends requests and waits for their replies; replies may come in any order (§3)."""

    def __init__(self, conn: Connection, role: str) -> None:
        self.conn = conn
        self.role = role
        self.info: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        # Ids of requests whose caller gave up (cancelled) before the reply came: the reply
        # may still arrive, and it is not the server's fault.
        self._abandoned: set[int] = set()
        self._events_send, self.events = trio.open_memory_channel[tuple[str, dict[str, Any]]](
            math.inf
        )
        self._error: BaseException | None = None

    async def hello(self, domid: int | None = None, *, takeover: bool = False) -> dict[str, Any]:
        """Say hello as this client's role; OpError if refused (the connection stays usable
        after ESRCH, EBUSY or EINVAL, so a caller may retry)."""
        fields: dict[str, Any] = {"v": VERSION, "role": self.role}
        if domid is not None:
            fields["domid"] = domid
        if takeover:
            fields["takeover"] = True
        self.info = await self.call("hello", _id=0, **fields)
        return self.info

    async def request(self, op: str, *, _id: int | None = None, **fields: Any) -> dict[str, Any]:
        """Send a request and return its reply map, `ok` true or false."""
        rid = next(self._ids) if _id is None else _id
        msg = make_request(op, rid, self.role, **fields)
        if self._error is not None:
            raise ConnectionClosed(f"connection lost: {self._error}")
        pending = self._pending[rid] = _Pending(op)
        try:
            await self.conn.send(msg)
            await pending.done.wait()
        finally:
            self._pending.pop(rid, None)
            if not pending.done.is_set():
                self._abandoned.add(rid)
        if isinstance(pending.reply, BaseException):
            raise ConnectionClosed(f"connection lost: {pending.reply}")
        assert pending.reply is not None
        return pending.reply

    async def call(self, op: str, *, _id: int | None = None, **fields: Any) -> dict[str, Any]:
        """Send a request and return its successful reply; OpError when `ok` is false."""
        reply = await self.request(op, _id=_id, **fields)
        if not reply["ok"]:
            raise OpError(reply["msg"], reply["err"])
        return reply

    async def _reader(self) -> None:
        try:
            while True:
                msg = await self.conn.receive()
                if "ev" in msg and "id" not in msg:
                    self._events_send.send_nowait(parse_event(msg))
                    continue
                rid = msg.get("id")
                pending = self._pending.get(rid) if isinstance(rid, int) else None
                if pending is None and rid in self._abandoned:
                    self._abandoned.discard(rid)
                    continue
                if pending is None:
                    if not msg.get("ok", True):  # a connection-level error (EPROTO, id null)
                        raise RemoteProtocolError(f"server: {msg.get('err')}: {msg.get('msg')}")
                    raise RemoteProtocolError(f"reply with unknown id {rid!r}")
                pending.reply = parse_reply(pending.op, msg)
                pending.done.set()
        except (ConnectionClosed, RemoteProtocolError) as exc:
            self._error = exc
            for pending in self._pending.values():
                pending.reply = exc
                pending.done.set()
            self._events_send.close()


@asynccontextmanager
async def open_client(stream: trio.abc.Stream, role: str) -> AsyncIterator[Client]:
    """A Client over `stream` for the duration of the block (no hello sent yet)."""
    async with open_connection(stream) as conn:
        client = Client(conn, role)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client._reader)
                try:
                    yield client
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise _single(group) from None


@asynccontextmanager
async def open_unix_client(path: str, role: str) -> AsyncIterator[Client]:
    """A Client connected to the Unix socket at `path` (no hello sent yet)."""
    stream = await trio.open_unix_socket(path)
    async with open_client(stream, role) as client:
        yield client
