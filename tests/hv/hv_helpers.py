"""Helpers for hv tests: an hv served over Unix socket pairs, and clients to it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from hv import Hypervisor
from protocol import PAGE_SIZE
from transport import Client, ConnectionClosed, open_client

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SOCKET_OF = {"pager": "privcmd.sock", "mapper": "privcmd.sock", "control": "privcmd.sock"}


class Harness:
    """An hv and a nursery to serve its connections in; clients over Unix socket pairs, as
    the processes meet (so the transport's direct writes and corking run here too)."""

    def __init__(self, hv: Hypervisor, nursery: trio.Nursery) -> None:
        self.hv = hv
        self.nursery = nursery

    @asynccontextmanager
    async def client(
        self,
        role: str,
        domid: int | None = 1,
        *,
        socket: str | None = None,
        hello: bool = True,
        takeover: bool = False,
    ) -> AsyncIterator[Client]:
        """A client of `role` on its socket, hello said (unless hello=False)."""
        ours, theirs = (trio.SocketStream(s) for s in trio.socket.socketpair())
        self.nursery.start_soon(
            self.hv.serve_stream, theirs, socket or SOCKET_OF.get(role, "guest.sock")
        )
        async with open_client(ours, role) as client:
            if hello:
                await client.hello(
                    None if role == "control" and domid is None else domid, takeover=takeover
                )
            yield client

    def check(self) -> None:
        """Invariants 1-3 hold."""
        assert self.hv.check() == []


def page(byte: int) -> bytes:
    """A page filled with one byte value."""
    return bytes([byte]) * PAGE_SIZE


async def next_event(client: Client, name: str, seconds: float = 5) -> dict[str, Any]:
    """The next event called `name` (others before it are skipped)."""
    with trio.fail_after(seconds):
        async for ev, fields in client.events:
            if ev == name:
                return fields
    raise AssertionError(f"events closed before {name}")


class Pending:
    """A request sent in the background: its raw reply once it comes."""

    def __init__(self) -> None:
        self.reply: dict[str, Any] | None = None
        self.lost: ConnectionClosed | None = None  # the connection died before the reply
        self.done = trio.Event()

    @property
    def ok(self) -> bool:
        assert self.reply is not None
        return bool(self.reply["ok"])


def spawn(nursery: trio.Nursery, client: Client, op: str, **fields: Any) -> Pending:
    """Send `op` from a task of `nursery`; the Pending fills in when the reply comes."""
    pending = Pending()

    async def run() -> None:
        try:
            pending.reply = await client.request(op, **fields)
        except ConnectionClosed as exc:
            pending.lost = exc
        pending.done.set()

    nursery.start_soon(run)
    return pending


def rsp(req: dict[str, Any]) -> dict[str, Any]:
    """The response that answers a request of a `mem_event`."""
    return {k: req[k] for k in ("seq", "gfn", "vcpu_id", "flags")}


async def page_out(pager: Client, gfns: list[int]) -> None:
    """Nominate and evict gfns (they must be pageable)."""
    assert (await pager.call("nominate", gfns=gfns))["results"] == [0] * len(gfns)
    assert (await pager.call("evict", gfns=gfns))["results"] == [0] * len(gfns)


class HvProcess:
    """`python -m hv` as a child process; its stderr log lines are collected by a thread."""

    def __init__(self, args: list[str]) -> None:
        self.run_dir = tempfile.mkdtemp(prefix="hv-", dir="/tmp")  # short: sun_path is small
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._more = threading.Condition()  # notified for each line read
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hv", "--run-dir", self.run_dir, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._more:
                self.lines.append(line)
                self._more.notify_all()
            if '"hv.ready"' in line:
                self.ready.set()

    def path(self, socket: str) -> str:
        return os.path.join(self.run_dir, socket)

    def events(self) -> list[str]:
        """The `event` of every JSON log line so far."""
        out = []
        for line in self.lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line).get("event"))
        return out

    def wait_event(self, event: str, timeout: float = 10) -> bool:
        """Block until a log line with `event` has been read (lines reach us through a
        pipe and a reader thread, after hv wrote them); False after `timeout` s."""
        with self._more:
            return self._more.wait_for(lambda: event in self.events(), timeout)

    def stop(self) -> None:
        """Kill the child by pid if it still runs, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


@asynccontextmanager
async def hv_process(*args: str) -> AsyncIterator[HvProcess]:
    """A running `python -m hv`, ready (both sockets listen); killed on every path."""
    proc = HvProcess(list(args))
    try:
        ok = await trio.to_thread.run_sync(proc.ready.wait, 20)
        assert ok, f"hv did not get ready: {''.join(proc.lines)[-2000:]}"
        yield proc
    finally:
        proc.stop()
