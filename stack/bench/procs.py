"""The hv and pager processes a bench section measures, and waits on their counters."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final

import trio

from protocol import MAX_AUDIT_COUNT
from transport import Client, open_unix_client

from ..procs import Child, ChildSet, open_children
from .flame import write_flamegraph
from .options import BenchError

#: Seconds any one wait on the stack may take before the bench gives up with an error.
STEP_TIMEOUT: Final = 300.0

#: Seconds between two polls of hv's counters (a poll is one control round trip).
POLL: Final = 0.002

#: Samples per second of `--profile`'s py-spy recorders.
PROFILE_RATE: Final = 250

#: Poll interval of waits that take a second or more (at most 1% of the figure).
POLL_LONG: Final = 0.01


class BenchStack:
    """One `python -m hv` with domain 1 and the pager processes run against it."""

    def __init__(
        self, children: ChildSet, run_dir: Path, name: str, profile: Path | None = None
    ) -> None:
        self.children = children
        self.profile = profile  # py-spy records hv, pager, guest here (raw stacks and SVG)
        self.run_dir = run_dir
        self.name = name
        self.state_dir = run_dir / "state"
        self.hv: Child | None = None
        self.control: Client | None = None
        self.nr_gfns = 0
        self._pagers = 0
        self._guest_spy: Child | None = None

    async def start_hv(
        self, nr_gfns: int, vcpus: int, *, ring_size: int = 64, ring_mode: str | None = None
    ) -> None:
        """Start hv and wait until both sockets answer a hello (`ring_mode`: hv's
        `--ring-mode`, its default when None)."""
        self.nr_gfns = nr_gfns
        argv = [sys.executable, "-m", "hv", "--run-dir", str(self.run_dir)]
        argv += ["--nr-gfns", str(nr_gfns), "--vcpus", str(vcpus)]
        argv += ["--ring-size", str(ring_size), "--log-level", "warning"]
        if ring_mode is not None:
            argv += ["--ring-mode", ring_mode]
        self.hv = self.children.add(f"{self.name}-hv", self._profiled(f"{self.name}-hv", argv))
        await self.hv.start()
        with trio.move_on_after(30) as waited:
            while not await self._hello_ok():
                if not self.hv.running:
                    raise BenchError(f"hv exited during start-up (log: {self.hv.log_path})")
                await trio.sleep(0.02)
        if waited.cancelled_caught:
            raise BenchError(f"hv did not become ready in 30 s (log: {self.hv.log_path})")

    async def _hello_ok(self) -> bool:
        paths = [self.run_dir / "privcmd.sock", self.run_dir / "guest.sock"]
        if not all(p.exists() for p in paths):
            return False
        try:
            async with open_unix_client(str(paths[1]), "guest") as c:
                await c.hello(1)
            return True
        except OSError:
            return False

    def pager_argv(
        self,
        *,
        batch: int = 64,
        policy: str = "xenpaging",
        target: int | None = None,
        log_level: str = "warning",
        reserve: int | None = 0,
    ) -> list[str]:
        """The command line of a pager process on this stack's store. No reserve unless
        asked (`reserve`; None: the pager's default): a section that pages N gfns out
        measures N, not N and a reserve's refill behind them."""
        argv = [sys.executable, "-m", "pager", "--run-dir", str(self.run_dir)]
        argv += ["--state-dir", str(self.state_dir), "--batch", str(batch)]
        argv += ["--policy", policy, "--log-level", log_level, "--on-exit", "keep"]
        if target is not None:
            argv += ["--target", str(target)]
        if reserve is not None:
            argv += ["--reserve", str(reserve)]
        return argv

    async def start_pager(self, argv: list[str], *, profile: bool = True) -> Child:
        """Start a pager process (not waiting for it to attach)."""
        self._pagers += 1
        name = f"{self.name}-pager{self._pagers}"
        child = self.children.add(name, self._profiled(name, argv) if profile else argv)
        await child.start()
        return child

    def _spy(self, name: str) -> list[str]:
        assert self.profile is not None
        out = str(self.profile / f"{name}.txt")
        spy = str(Path(sys.executable).with_name("py-spy"))
        return [spy, "record", "--format", "raw", "--rate", str(PROFILE_RATE), "--output", out]

    def _profiled(self, name: str, argv: list[str]) -> list[str]:
        if self.profile is None:
            return argv
        return [*self._spy(name), "--", *argv]

    async def profile_guest(self) -> None:
        """Under `--profile`: py-spy records this process too, the guest of the bench's
        reads (its `guest.sock` client), until `stop_profiled`."""
        if self.profile is None:
            return
        name = f"{self.name}-guest"
        self._guest_spy = self.children.add(
            f"{name}-py-spy", [*self._spy(name), "--pid", str(os.getpid())]
        )
        await self._guest_spy.start()

    async def stop_profiled(self) -> None:
        """Stop each profiled child's Python process (not py-spy, which then writes out),
        and the guest's recorder (SIGINT: py-spy writes out and exits); then a flame graph
        (SVG) beside each raw profile of this stack."""
        if self.profile is None:
            return
        for child in self.children.children.values():
            if not (child.running and child.argv[0].endswith("py-spy") and child.pid):
                continue
            if child is self._guest_spy:
                child.send_signal(signal.SIGINT)
            for pid in children_of(child.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            with trio.move_on_after(30):
                await child.wait()
        for raw in sorted(self.profile.glob(f"{self.name}-*.txt")):
            write_flamegraph(raw, raw.with_suffix(".svg"))

    async def counters(self) -> dict[str, Any]:
        """tot_pages, target, paged_pages of domain 1 (a control `audit` of no gfn)."""
        assert self.control is not None
        return await self.control.call("audit", domid=1, start=0, count=0)

    async def status(self) -> dict[str, Any]:
        """Domain 1's entry of hv's status."""
        assert self.control is not None
        return (await self.control.call("status"))["domains"][0]

    async def set_target(self, tot_pages: int) -> None:
        """Lower or raise domain 1's target (the pager follows it)."""
        assert self.control is not None
        await self.control.call("set_target", domid=1, tot_pages=tot_pages)

    async def wait_counters(
        self, pred: Callable[[dict[str, Any]], bool], what: str, *, every: float = POLL
    ) -> dict[str, Any]:
        """Poll hv's counters every `every` s until `pred` holds (no event crosses processes).

        Each poll costs hv one small request: long waits poll less often.
        """
        with trio.move_on_after(STEP_TIMEOUT):
            while True:
                c = await self.counters()
                if pred(c):
                    return c
                await trio.sleep(every)
        raise BenchError(f"{self.name}: timed out waiting for {what}")

    async def wait_status(self, pred: Callable[[dict[str, Any]], bool], what: str) -> None:
        """Poll hv's status of domain 1 until `pred` holds."""
        with trio.move_on_after(STEP_TIMEOUT):
            while not pred(await self.status()):  # noqa: ASYNC110 - hv is another process
                await trio.sleep(POLL)
            return
        raise BenchError(f"{self.name}: timed out waiting for {what}")

    async def wait_attached(self, pager: Child) -> None:
        """Wait until a pager is attached to domain 1."""
        with trio.move_on_after(60):
            while not (await self.status())["pager"]["attached"]:
                if not pager.running:
                    raise BenchError(f"the pager exited (log: {pager.log_path})")
                await trio.sleep(0.01)
            return
        raise BenchError(f"the pager did not attach in 60 s (log: {pager.log_path})")

    async def gfns_of_type(self, p2mt: int) -> list[int]:
        """Every gfn of domain 1 whose p2m type is `p2mt` (control `audit`)."""
        assert self.control is not None
        out: list[int] = []
        for start in range(0, self.nr_gfns, MAX_AUDIT_COUNT):
            count = min(MAX_AUDIT_COUNT, self.nr_gfns - start)
            reply = await self.control.call("audit", domid=1, start=start, count=count)
            types = reply["types"]
            out += [start + i for i, t in enumerate(types) if t == p2mt]
        return out


def children_of(pid: int) -> list[int]:
    """The child pids of `pid` (Linux /proc), none if it is gone."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
    return out


@contextlib.asynccontextmanager
async def open_stack(
    work: Path,
    name: str,
    nr_gfns: int,
    vcpus: int,
    profile: Path | None = None,
    *,
    ring_mode: str | None = None,
) -> AsyncIterator[BenchStack]:
    """hv started and a control connection open; every child reaped on exit."""
    run_dir = work / name
    run_dir.mkdir()
    async with open_children(run_dir) as children:
        stack = BenchStack(children, run_dir, name, profile)
        await stack.start_hv(nr_gfns, vcpus, ring_mode=ring_mode)
        async with open_unix_client(str(run_dir / "privcmd.sock"), "control") as control:
            await control.hello()
            stack.control = control
            yield stack
        with trio.CancelScope(shield=True):
            await stack.stop_profiled()
