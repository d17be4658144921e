"""Recovery, page-out and page-in across real hv and pager processes, for `inproc`'s report.

`recovery_process` kills a pager with `pages` out, lets a guest vCPU wait on a paged gfn,
starts a new pager process and times it to the first served request; then it times
proactive and fault-driven page-in across the processes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import trio

from protocol import PAGE_SIZE
from transport import open_unix_client


async def _status(run_dir: Path) -> dict[str, Any]:
    async with open_unix_client(str(run_dir / "privcmd.sock"), "control") as control:
        await control.hello()
        return (await control.call("status"))["domains"][0]


async def _poll_status(run_dir: Path, pred: Any) -> dict[str, Any]:
    """Poll a separate hv process's status until `pred` holds (no event crosses processes)."""
    while True:
        try:
            st = await _status(run_dir)
            if pred(st):
                return st
        except OSError:
            pass  # hv still starting
        await trio.sleep(0.01)


async def recovery_process(pages: int, tmp: Path) -> dict[str, Any]:
    """`inproc`'s recovery with hv and both pagers as real processes; its figures."""
    run_dir, state = tmp / "run", tmp / "state"
    run_dir.mkdir()
    nr = pages + 1024
    py = sys.executable
    pager_argv = [
        py,
        "-m",
        "pager",
        "--run-dir",
        str(run_dir),
        "--state-dir",
        str(state),
        "--batch",
        "256",
        "--log-level",
        "warning",
    ]
    procs: list[trio.Process] = []
    out: dict[str, Any] = {"paged_out": pages}
    try:
        procs.append(
            await trio.lowlevel.open_process(
                [
                    py,
                    "-m",
                    "hv",
                    "--run-dir",
                    str(run_dir),
                    "--nr-gfns",
                    str(nr),
                    "--vcpus",
                    "64",
                    "--target",
                    "1024",
                    "--log-level",
                    "warning",
                ]
            )
        )
        await _poll_status(run_dir, lambda st: True)
        first = await trio.lowlevel.open_process(pager_argv)
        procs.append(first)
        t0 = time.perf_counter()
        await _poll_status(run_dir, lambda st: st["paged_pages"] >= pages)
        out["setup_pageout_s"] = time.perf_counter() - t0
        first.kill()
        await first.wait()
        async with open_unix_client(str(run_dir / "guest.sock"), "guest") as guest:
            await guest.hello(1)
            served = trio.Event()
            async with open_unix_client(str(run_dir / "privcmd.sock"), "control") as control:
                await control.hello()
                audit = await control.call("audit", domid=1, start=0, count=nr)
            gfn = audit["types"].index(2)  # a paged gfn

            async def touch() -> None:
                await guest.call("read", vcpu=0, gfn=gfn, off=0, len=PAGE_SIZE)
                served.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(touch)
                await _poll_status(run_dir, lambda st: st["ring"]["used"] >= 1)
                t0 = time.perf_counter()
                procs.append(await trio.lowlevel.open_process(pager_argv))
                await served.wait()
                out["process_start_to_first_served_s"] = time.perf_counter() - t0
            out["pageout_pps"] = pages / out["setup_pageout_s"]
            # Proactive page-in across processes: raise the target, time until none is out.
            async with open_unix_client(str(run_dir / "privcmd.sock"), "control") as control:
                await control.hello()
                await control.call("set_target", domid=1, tot_pages=nr)
                t0 = time.perf_counter()
                await _poll_status(run_dir, lambda st: st["paged_pages"] == 0)
                out["pagein_proactive_pps"] = pages / (time.perf_counter() - t0)
                # Faults across processes: `faults` pages out, then 64 guest vCPUs (in this
                # process) touch them while the pager keeps the target (pages others out).
                faults = min(pages, 20000)
                await control.call("set_target", domid=1, tot_pages=nr - faults)
                await _poll_status(run_dir, lambda st: st["paged_pages"] >= faults)
                audit = await control.call("audit", domid=1, start=0, count=nr)
            todo = [g for g, t in enumerate(audit["types"]) if t == 2]
            async with open_unix_client(str(run_dir / "guest.sock"), "guest") as guest:
                await guest.hello(1)
                t0 = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for v in range(64):

                        async def run(v: int = v) -> None:
                            for g in todo[v::64]:
                                await guest.call("read", vcpu=v, gfn=g, off=0, len=8)

                        nursery.start_soon(run)
                out["pagein_faults_pps"] = len(todo) / (time.perf_counter() - t0)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
        with trio.CancelScope(shield=True):
            for proc in procs:
                await proc.wait()
    return out
