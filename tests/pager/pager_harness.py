"""Harness for pager tests: hv, pagers and a scripted guest in one trio run.

Everything meets over Unix socket pairs, as the processes do, or, with
`open_stack(..., streams="memory")`, over `trio.testing.memory_stream_pair` (the transport
takes the same code paths over both).
A pager runs in its own task; a crash point (`raise_simulated_crash`) ends that task with
`SimulatedCrash`, and the harness records it so the test can start the next pager on the
same state directory.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio.testing

from hv import HvConfig, Hypervisor
from pager import (
    Faults,
    Pager,
    PagerConfig,
    PagerStats,
    RealDisk,
    open_store,
    parse_faults,
    raise_simulated_crash,
    run_pager,
)
from pager.disk import Disk
from protocol import PAGE_SIZE
from transport import Client, open_client


def page_bytes(gfn: int, version: int) -> bytes:
    """The 4096 bytes the scripted guest stores in `gfn` at `version` (0: zero page)."""
    if version == 0:
        return bytes(PAGE_SIZE)
    seed = hashlib.blake2b(f"{gfn}:{version}".encode(), digest_size=64).digest()
    return seed * (PAGE_SIZE // len(seed))


@dataclass
class PagerRun:
    """One pager task: its stop event, and how it ended."""

    stop: trio.Event = field(default_factory=trio.Event)
    started: trio.Event = field(default_factory=trio.Event)
    finished: trio.Event = field(default_factory=trio.Event)
    pager: Pager | None = None
    stats: PagerStats | None = None
    error: BaseException | None = None

    async def stop_ok(self) -> None:
        """Stop the pager, wait for it to end, and check it ended without an error."""
        self.stop.set()
        await self.finished.wait()
        assert self.error is None, repr(self.error)

    def started_with(self, pager: Pager) -> None:
        """Record the pager once its recovery is done."""
        self.pager = pager
        self.started.set()

    async def wait_started(self) -> Pager:
        """Wait until recovery is done (fails the test if the pager ended first)."""
        async with trio.open_nursery() as nursery:

            async def ended() -> None:
                await self.finished.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(ended)
            await self.started.wait()
            nursery.cancel_scope.cancel()
        if self.pager is None:
            raise AssertionError(f"pager ended before serving: {self.error!r}")
        return self.pager


class RunStatus:
    """A duck-typed `task_status` that records the started pager in a PagerRun."""

    def __init__(self, run: PagerRun) -> None:
        self._run = run

    def started(self, value: Pager) -> None:
        self._run.started_with(value)


class Guest:
    """A scripted guest: one connection, vCPUs as concurrent callers, a shadow of versions."""

    def __init__(self, client: Client, nr_gfns: int) -> None:
        self.client = client
        self.versions = [0] * nr_gfns

    async def write(self, vcpu: int, gfn: int, version: int) -> None:
        """Write the whole page at `version`."""
        await self.client.call("write", vcpu=vcpu, gfn=gfn, off=0, data=page_bytes(gfn, version))
        self.versions[gfn] = version

    async def read_check(self, vcpu: int, gfn: int) -> None:
        """Read the whole page and check it is the last version written."""
        reply = await self.client.call("read", vcpu=vcpu, gfn=gfn, off=0, len=PAGE_SIZE)
        assert reply["data"] == page_bytes(gfn, self.versions[gfn]), f"gfn {gfn}: wrong bytes"

    async def on_vcpus(self, vcpus: int, gfns: list[int], op: Callable[[int, int], Any]) -> None:
        """Run `op(vcpu, gfn)` over `gfns`, spread over `vcpus` concurrent vCPUs."""
        async with trio.open_nursery() as nursery:
            for v in range(vcpus):

                async def run(v: int = v) -> None:
                    for gfn in gfns[v::vcpus]:
                        await op(v, gfn)

                nursery.start_soon(run)

    async def fill(self, vcpus: int, version: int = 1) -> None:
        """Write every gfn."""

        async def w(v: int, g: int) -> None:
            await self.write(v, g, version)

        await self.on_vcpus(vcpus, list(range(len(self.versions))), w)

    async def verify_all(self, vcpus: int) -> None:
        """Read back every byte of every gfn."""
        await self.on_vcpus(vcpus, list(range(len(self.versions))), self.read_check)


class Stack:
    """hv plus whatever connects to it, inside one nursery."""

    def __init__(
        self, nursery: trio.Nursery, hv: Hypervisor, state_dir: Path, streams: str = "socket"
    ) -> None:
        self.nursery = nursery
        self.hv = hv
        self.state_dir = state_dir
        self.streams = streams

    def connect(self, socket: str) -> trio.abc.Stream:
        """A client stream to hv's `socket`, served by hv in the background."""
        ours: trio.abc.Stream
        theirs: trio.abc.Stream
        if self.streams == "memory":
            ours, theirs = trio.testing.memory_stream_pair()
        else:
            ours, theirs = (trio.SocketStream(s) for s in trio.socket.socketpair())
        self.nursery.start_soon(self.hv.serve_stream, theirs, socket)
        return ours

    @asynccontextmanager
    async def client(self, role: str, domid: int | None = 1) -> AsyncIterator[Client]:
        """A client of `role` that has said hello."""
        socket = "guest.sock" if role == "guest" else "privcmd.sock"
        async with open_client(self.connect(socket), role) as client:
            await client.hello(domid)
            yield client

    @asynccontextmanager
    async def guest(self) -> AsyncIterator[Guest]:
        """The scripted guest of domain 1."""
        async with self.client("guest") as client:
            yield Guest(client, self.hv.config.nr_gfns)

    async def set_target(self, tot_pages: int) -> None:
        """The control op `set_target` for domain 1."""
        async with self.client("control", None) as control:
            await control.call("set_target", domid=1, tot_pages=tot_pages)

    def domain_status(self) -> dict[str, Any]:
        """Domain 1's entry of hv's status."""
        return self.hv.status()["domains"][0]

    def start_pager(
        self,
        config: PagerConfig | None = None,
        faults: str | Faults | None = None,
        state_dir: Path | None = None,
        disk: Disk | None = None,
    ) -> PagerRun:
        """Start a pager task; crash points raise SimulatedCrash in-process."""
        run = PagerRun()
        stream = self.connect("privcmd.sock")
        spec = (
            faults
            if isinstance(faults, Faults)
            else parse_faults(faults, crash=raise_simulated_crash)
        )

        config = config or PagerConfig()

        async def runner() -> None:
            try:
                try:
                    store = await open_store(
                        disk if disk is not None else RealDisk(state_dir or self.state_dir),
                        faults=spec,
                        lock_timeout=config.lock_timeout,
                    )
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
                run.stats = await run_pager(
                    stream,
                    store,
                    config,
                    faults=spec,
                    stop=run.stop,
                    task_status=RunStatus(run),  # type: ignore[arg-type]
                )
            except BaseException as exc:
                if isinstance(exc, trio.Cancelled):
                    raise
                run.error = exc
                if not isinstance(exc, Exception) and type(exc).__name__ != "SimulatedCrash":
                    raise
            finally:
                run.finished.set()

        self.nursery.start_soon(runner)
        return run

    async def until(self, pager: Pager, pred: Callable[[], bool]) -> None:
        """Wait until `pred()` holds, re-checking after each step the pager takes."""
        while not pred():
            await pager.wait_progress()

    def assert_clean(self) -> None:
        """hv's invariants hold and no vCPU is paused."""
        assert self.hv.check() == []
        st = self.domain_status()
        assert st["paused_vcpus"] == []


@asynccontextmanager
async def open_stack(
    tmp_path: Path, *, streams: str = "socket", **hv_config: Any
) -> AsyncIterator[Stack]:
    """hv with `hv_config`, torn down at the end of the block; connections over Unix
    socket pairs (`streams="socket"`) or memory stream pairs (`"memory"`)."""
    hv = Hypervisor(HvConfig(**hv_config))
    try:
        async with trio.open_nursery() as nursery:
            stack = Stack(nursery, hv, tmp_path / "state", streams)
            yield stack
            nursery.cancel_scope.cancel()
    finally:
        hv.close()
