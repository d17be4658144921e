"""Helpers for tests of the real xenpaging: hv in-process, xenpaging as a child, a frame tap.

`rig(...)` serves an in-process hv on a run directory; `Rig.start_pager` runs xenpaging on
the shim; `Tap` sits between the shim and `privcmd.sock` and can hold back hv's
`mem_event` events or run a hook before an `evict` goes through, so races the real binary
would meet by chance happen on purpose.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import trio

from hv import HvConfig, Hypervisor, serve
from transport import Client, open_unix_client

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Shim:
    """A built shim and the binary it serves."""

    binary: Path
    lib_dir: Path
    preload: str | None = None  # the ASan runtime, for the sanitized build

    def env(self, run_dir: Path) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = str(self.lib_dir)
        env["XENSHIM_RUN_DIR"] = str(run_dir)
        env["XENSHIM_HELLO_TIMEOUT"] = "1"
        if self.preload:
            env["LD_PRELOAD"] = self.preload
            # xenpaging itself leaks by design (its page-in thread never ends): errors only.
            env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=0:exitcode=99"
        return env


def page(gfn: int, version: int) -> bytes:
    """4096 bytes that only (gfn, version) produce."""
    seed = hashlib.blake2b(f"{gfn}:{version}".encode(), digest_size=64).digest()
    return seed * 64


@dataclass
class Rig:
    hv: Hypervisor
    run_dir: Path
    nursery: trio.Nursery
    shim: Shim
    pager_dir: Path  # where the shim connects (the tap's directory, or run_dir)
    pagers: list[trio.Process] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def dom(self) -> Any:
        return self.hv.domain(1)

    def status(self) -> dict[str, Any]:
        return self.dom.status()

    async def start_pager(self) -> trio.Process:
        n = len(self.pagers)
        log = self.run_dir / f"xenpaging.{n}.log"
        self.logs.append(log)
        with open(log, "wb") as out:  # noqa: ASYNC230 - a local file, instant
            proc = await trio.lowlevel.open_process(
                [str(self.shim.binary), "-d", "1", "-f", str(self.run_dir / "pagefile")],
                env=self.shim.env(self.pager_dir),
                stdout=out,
                stderr=out,
            )
        self.pagers.append(proc)
        return proc

    def log(self, n: int = -1) -> str:
        return self.logs[n].read_text(errors="replace")

    async def until(self, cond: Callable[[], bool], what: str, seconds: float = 30) -> None:
        """Poll hv (in-process, so no I/O) until `cond` holds; fail naming `what`."""
        with trio.move_on_after(seconds):
            while not cond():  # noqa: ASYNC110 - hv state moved by another process
                await trio.sleep(0.02)
            return
        raise AssertionError(f"not within {seconds} s: {what}; status {self.status()}")

    async def attached(self) -> None:
        await self.until(lambda: self.status()["pager"]["attached"], "xenpaging attached")

    async def paged_down(self, target: int) -> None:
        self.dom.set_target(target)
        await self.until(lambda: self.status()["tot_pages"] <= target, f"paged down to {target}")

    async def stop_pager(self, proc: trio.Process, seconds: float = 60) -> int:
        """SIGTERM (page everything in, detach) and the exit status."""
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(seconds):
            return await proc.wait()


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path, shim: Shim, *, tap: Tap | None = None, **config: Any
) -> AsyncIterator[Rig]:
    """hv (in this process) on `tmp_path`, domain 1 shaped by `config`; children killed at exit."""
    config.setdefault("ring_size", 8)
    hv = Hypervisor(HvConfig(**config))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, hv, str(run_dir))
            pager_dir = run_dir
            if tap is not None:
                pager_dir = tmp_path / "tap"
                pager_dir.mkdir()
                await nursery.start(tap.serve, str(pager_dir), str(run_dir / "privcmd.sock"))
            r = Rig(hv, run_dir, nursery, shim, pager_dir)
            try:
                yield r
            finally:
                for proc in r.pagers:  # reaped even when the test was cancelled
                    if proc.returncode is None:
                        proc.kill()
                    with trio.CancelScope(shield=True), trio.move_on_after(10):
                        await proc.wait()
                nursery.cancel_scope.cancel()
            for log in r.logs:  # the sanitized build must have found nothing
                text = log.read_text(errors="replace")
                assert "AddressSanitizer" not in text, text[-3000:]
    finally:
        hv.close()


@contextlib.asynccontextmanager
async def guest(r: Rig) -> AsyncIterator[Client]:
    async with open_unix_client(str(r.run_dir / "guest.sock"), "guest") as g:
        await g.hello(1)
        yield g


async def fill(g: Client, gfns: range, vcpus: int) -> None:
    """Write page(gfn, 1) to every gfn, one vCPU per stripe."""

    async def stripe(v: int) -> None:
        for gfn in gfns[v::vcpus]:
            await g.call("write", vcpu=v, gfn=gfn, off=0, data=page(gfn, 1))

    async with trio.open_nursery() as n:
        for v in range(vcpus):
            n.start_soon(stripe, v)


async def verify(g: Client, expect: dict[int, bytes], vcpus: int) -> list[int]:
    """Read every gfn of `expect`; the gfns whose bytes differ."""
    bad: list[int] = []
    items = sorted(expect.items())

    async def stripe(v: int) -> None:
        for gfn, want in items[v::vcpus]:
            got = (await g.call("read", vcpu=v, gfn=gfn, off=0, len=4096))["data"]
            if got != want:
                bad.append(gfn)

    async with trio.open_nursery() as n:
        for v in range(vcpus):
            n.start_soon(stripe, v)
    return sorted(bad)


Hook = Callable[[list[int]], Awaitable[None]]


class Tap:
    """A frame-level relay between the shim and hv's privcmd.sock.

    `hold()` keeps hv's `mem_event` events back until `release()`; `on_evict` runs before an
    `evict` is passed on (the pager's copy is written, the gfn still `paging_out`).
    """

    def __init__(self) -> None:
        self.holding = False
        self.held: list[bytes] = []
        self.release_event = trio.Event()
        self.on_evict: Hook | None = None
        self.events_seen = 0

    def hold(self) -> None:
        self.holding = True
        self.release_event = trio.Event()

    def release(self) -> None:
        self.holding = False
        self.release_event.set()

    async def serve(
        self, listen_dir: str, upstream: str, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        path = os.path.join(listen_dir, "privcmd.sock")
        listeners = [await _unix_listener(path)]

        async def handle(down: trio.SocketStream) -> None:
            up = await trio.open_unix_socket(upstream)
            async with down, up, trio.open_nursery() as n:
                n.start_soon(self._to_hv, down, up)
                n.start_soon(self._to_pager, up, down)

        async with trio.open_nursery() as n:
            task_status.started()
            await trio.serve_listeners(handle, listeners, handler_nursery=n)

    async def _to_hv(self, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        # aclosing: a relay cancelled mid-stream must not leave its generator to the GC
        # (trio's ResourceWarning would then fail whichever test collects it).
        # A peer that has gone ends this direction, as a closed socket would.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async with contextlib.aclosing(_frames(src)) as frames:
                async for body in frames:
                    msg = msgpack.unpackb(body)
                    if msg.get("op") == "evict" and self.on_evict is not None:
                        await self.on_evict(list(msg["gfns"]))
                    await dst.send_all(struct.pack(">I", len(body)) + body)
            await dst.send_eof()

    async def _to_pager(self, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._relay_to_pager(src, dst)  # an exited pager drops what hv still sent
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await dst.aclose()

    async def _relay_to_pager(self, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        async with contextlib.aclosing(_frames(src)) as frames:
            async for body in frames:
                msg = msgpack.unpackb(body)
                frame = struct.pack(">I", len(body)) + body
                if msg.get("ev") == "mem_event":
                    self.events_seen += 1
                    if self.holding:
                        self.held.append(frame)
                        await self.release_event.wait()
                        for f in self.held:
                            await dst.send_all(f)
                        self.held.clear()
                        continue
                await dst.send_all(frame)


async def _unix_listener(path: str) -> trio.SocketListener:
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(16)
    return trio.SocketListener(sock)


async def _frames(stream: trio.SocketStream) -> AsyncIterator[bytes]:
    buf = bytearray()
    while True:
        while len(buf) >= 4:
            n = struct.unpack(">I", buf[:4])[0]
            if len(buf) < 4 + n:
                break
            yield bytes(buf[4 : 4 + n])
            del buf[: 4 + n]
        try:
            chunk = await stream.receive_some(1 << 16)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if not chunk:
            return
        buf += chunk
