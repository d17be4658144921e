"""The client side: requests matched to replies by `id`, events on a channel."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
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
        #: When set, events are handed to this function as they are read, in order, instead
        #: of going through `events` (one task switch less); `events` still ends when the
        #: connection does. Set it with `take_events`.
        self._on_event: Callable[[str, dict[str, Any]], None] | None = None

    def take_events(self, on_event: Callable[[str, dict[str, Any]], None]) -> None:
        """From now on, call `on_event(ev, fields)` for each event as it is read (in the
        reader task: it must not block); events already queued on `events` go first."""
        while True:
            try:
                ev, fields = self.events.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            on_event(ev, fields)
        self._on_event = on_event

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
        rid = await self.send_request(op, _id=_id, **fields)
        return await self.reply(rid)

    async def send_request(self, op: str, *, _id: int | None = None, **fields: Any) -> int:
        """Send a request without waiting for its reply; its id, for `reply` (or `forget`)."""
        return (await self.send_requests([(op, fields)], _ids=[_id]))[0]

    async def send_requests(
        self, requests: Sequence[tuple[str, Mapping[str, Any]]], *, _ids: Sequence[int | None] = ()
    ) -> list[int]:
        """Send several requests back to back in one write, without waiting for replies;
        their ids, for `reply` (or `forget`). The server answers one connection's requests
        in order, so the second may rely on the first having been served."""
        rids, msgs = self._register(requests, _ids)
        try:
            await self.conn.send(*msgs)
        except BaseException:
            self._unregister(rids)
            raise
        return rids

    def can_send_now(self) -> bool:
        """Whether `send_requests_now` can send at once (ConnectionClosed if it never can)."""
        if self._error is not None:
            raise ConnectionClosed(f"connection lost: {self._error}")
        return self.conn.can_send_now()

    def send_requests_now(self, requests: Sequence[tuple[str, Mapping[str, Any]]]) -> list[int]:
        """`send_requests` from code that cannot wait, such as an event handler (see
        `take_events`); only when `can_send_now()`."""
        rids, msgs = self._register(requests, ())
        try:
            self.conn.send_now(*msgs)
        except BaseException:
            self._unregister(rids)
            raise
        return rids

    def _register(
        self, requests: Sequence[tuple[str, Mapping[str, Any]]], ids: Sequence[int | None]
    ) -> tuple[list[int], list[dict[str, Any]]]:
        wanted = list(ids) + [None] * (len(requests) - len(ids))
        rids = [next(self._ids) if rid is None else rid for rid in wanted]
        msgs = [
            make_request(op, rid, self.role, **fields)
            for (op, fields), rid in zip(requests, rids, strict=True)
        ]
        if self._error is not None:
            raise ConnectionClosed(f"connection lost: {self._error}")
        for rid, (op, _) in zip(rids, requests, strict=True):
            self._pending[rid] = _Pending(op)
        return rids, msgs

    def _unregister(self, rids: list[int]) -> None:
        for rid in rids:
            del self._pending[rid]  # never sent: no reply can come

    async def reply(self, rid: int) -> dict[str, Any]:
        """The reply map to request `rid` (sent by `send_request`), `ok` true or false."""
        pending = self._pending[rid]
        try:
            await pending.done.wait()
        finally:
            self.forget(rid)
        if isinstance(pending.reply, BaseException):
            raise ConnectionClosed(f"connection lost: {pending.reply}")
        assert pending.reply is not None
        return pending.reply

    async def call_reply(self, rid: int) -> dict[str, Any]:
        """As `reply`, but OpError when `ok` is false (as `call`)."""
        reply = await self.reply(rid)
        if not reply["ok"]:
            raise OpError(reply["msg"], reply["err"])
        return reply

    def forget(self, rid: int) -> None:
        """Stop waiting for request `rid`: its reply, if it still comes, is ignored."""
        pending = self._pending.pop(rid, None)
        if pending is not None and not pending.done.is_set():
            self._abandoned.add(rid)

    async def call(self, op: str, *, _id: int | None = None, **fields: Any) -> dict[str, Any]:
        """Send a request and return its successful reply; OpError when `ok` is false."""
        return await self.call_reply(await self.send_request(op, _id=_id, **fields))

    async def _reader(self) -> None:
        try:
            while True:
                msg = await self.conn.receive()
                if "ev" in msg and "id" not in msg:
                    event = parse_event(msg)
                    if self._on_event is not None:
                        self._on_event(*event)
                    else:
                        self._events_send.send_nowait(event)
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
