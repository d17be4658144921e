"""``python -m stack.bench.inproc``: page-out / page-in throughput and recovery time.

Everything runs in one trio run over memory streams, with the real `hv` (the stack may
import both; the pager itself never imports hv) and the real store on disk, so the numbers
include msgpack framing, hv's work, the pages file's writes and syncs.

- page-out: a pager with target = nr_gfns starts; the target drops to 0; pages/s until
  every gfn is paged out, per batch size;
- page-in (proactive): the target goes back to nr_gfns; pages/s until none is paged;
- page-in (faults): every page out again, then `vcpus` guest vCPUs touch every gfn; pages/s
  of request-driven page-ins (read, verify, prep, resume, free);
- recovery: `--recovery-pages` pages out, the pager killed (simulated crash), a guest vCPU
  touches a paged gfn (its request waits on the ring), a new pager starts: seconds from
  `run_pager` to that access being served, and the pager's own recovery time;
- the same recovery with hv and pagers as real processes (`process_recovery.py`).

`run_bench(...)` returns the numbers as a dict for the benchmark harness.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog
import trio
import trio.testing

from hv import HvConfig, Hypervisor
from pager.commit import open_store
from pager.core import Pager, PagerConfig, PagerStats, run_pager
from pager.faults import NO_FAULTS, Faults, parse_faults, raise_simulated_crash
from pager.realdisk import RealDisk
from protocol import PAGE_SIZE
from transport import open_client

from .process_recovery import recovery_process


async def _open_and_run(
    stream: trio.abc.Stream,
    state_dir: Path,
    config: PagerConfig,
    *,
    faults: Faults = NO_FAULTS,
    **kw: Any,
) -> PagerStats:
    """Open the store in `state_dir` (as `python -m pager` does), then run a pager on it."""
    try:
        store = await open_store(
            RealDisk(state_dir), faults=faults, lock_timeout=config.lock_timeout
        )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return await run_pager(stream, store, config, faults=faults, **kw)


class _Started:
    def __init__(self) -> None:
        self.pager: Pager | None = None
        self.event = trio.Event()
        self.stop = trio.Event()
        self.finished = trio.Event()

    async def run(self, *args: Any, **kw: Any) -> None:
        """run_pager, recording start and end (stop it with `self.stop`, then wait)."""
        try:
            await _open_and_run(*args, stop=self.stop, task_status=self, **kw)
        finally:
            self.finished.set()

    def started(self, value: Pager | None = None) -> None:
        """What trio.TaskStatus.started does: record the started pager."""
        self.pager = value
        self.event.set()


async def _until(pager: Pager, pred: Any) -> None:
    while not pred():
        await pager.wait_progress()


async def _throughput(batch: int, nr: int, vcpus: int, state_dir: Path) -> dict[str, Any]:
    hv = Hypervisor(HvConfig(nr_gfns=nr, vcpus=vcpus))
    dom = hv.domains[1]

    def paged() -> int:
        return hv.status()["domains"][0]["paged_pages"]

    out: dict[str, Any] = {"batch": batch, "pages": nr}
    try:
        async with trio.open_nursery() as nursery:

            def connect(socket: str) -> trio.abc.Stream:
                a, b = trio.testing.memory_stream_pair()
                nursery.start_soon(hv.serve_stream, b, socket)
                return a

            config = PagerConfig(
                batch=batch, concurrency=4, target=nr, recheck_interval=0.01, drain_timeout=600
            )
            status = _Started()
            nursery.start_soon(status.run, connect("privcmd.sock"), state_dir, config)
            await status.event.wait()
            pager = status.pager
            assert pager is not None
            # page-out
            t0 = time.perf_counter()
            config.target = 0
            pager.state.wake()
            await _until(pager, lambda: paged() == nr)
            out["pageout_pps"] = nr / (time.perf_counter() - t0)
            # proactive page-in
            t0 = time.perf_counter()
            config.target = nr
            pager.state.wake()
            await _until(pager, lambda: paged() == 0)
            out["pagein_proactive_pps"] = nr / (time.perf_counter() - t0)
            # request-driven page-in: every gfn out again, then the guest touches them all
            config.target = 0
            pager.state.wake()
            await _until(pager, lambda: paged() == nr)
            config.balance = False  # faults alone bring pages in: no page-out, no proactive
            async with open_client(connect("guest.sock"), "guest") as guest:
                await guest.hello(1)
                t0 = time.perf_counter()
                async with trio.open_nursery() as touch:
                    for v in range(vcpus):

                        async def run(v: int = v) -> None:
                            for g in range(v, nr, vcpus):
                                await guest.call("read", vcpu=v, gfn=g, off=0, len=8)

                        touch.start_soon(run)
                out["pagein_faults_pps"] = nr / (time.perf_counter() - t0)
            config.balance = True
            assert paged() == 0 and dom is hv.domains[1]
            status.stop.set()
            await status.finished.wait()  # a clean exit: detached
            nursery.cancel_scope.cancel()
    finally:
        hv.close()
    return out


async def _recovery(pages: int, state_dir: Path) -> dict[str, Any]:
    nr = pages + 1024
    hv = Hypervisor(HvConfig(nr_gfns=nr, vcpus=2, ring_size=64))
    out: dict[str, Any] = {"paged_out": pages}
    try:
        async with trio.open_nursery() as nursery:

            def connect(socket: str) -> trio.abc.Stream:
                a, b = trio.testing.memory_stream_pair()
                nursery.start_soon(hv.serve_stream, b, socket)
                return a

            status = _Started()
            crashed = trio.Event()

            async def first() -> None:
                try:
                    await _open_and_run(
                        connect("privcmd.sock"),
                        state_dir,
                        PagerConfig(batch=256, target=nr - pages, recheck_interval=0.01),
                        faults=parse_faults("after_resume@1", crash=raise_simulated_crash),
                        task_status=status,
                    )
                except BaseException as exc:
                    if type(exc).__name__ != "SimulatedCrash":
                        raise
                finally:
                    crashed.set()

            nursery.start_soon(first)
            await status.event.wait()
            pager = status.pager
            assert pager is not None
            t0 = time.perf_counter()
            await _until(pager, lambda: hv.status()["domains"][0]["paged_pages"] >= pages)
            out["setup_pageout_s"] = time.perf_counter() - t0
            paged_gfn = hv.domains[1].p2m.types.index(2)
            async with open_client(connect("guest.sock"), "guest") as guest:
                await guest.hello(1)
                served = trio.Event()

                async def touch(vcpu: int, gfn: int, event: trio.Event | None) -> None:
                    await guest.call("read", vcpu=vcpu, gfn=gfn, off=0, len=PAGE_SIZE)
                    if event is not None:
                        event.set()

                # A first fault makes the old pager die at after_resume (a crash, not a stop).
                await touch(0, paged_gfn, None)
                await crashed.wait()
                second = hv.domains[1].p2m.types.index(2)
                nursery.start_soon(touch, 1, second, served)
                # No pager is attached: once everything is blocked, the request is on the ring.
                await trio.testing.wait_all_tasks_blocked()
                assert hv.status()["domains"][0]["ring"]["used"] == 1
                status2 = _Started()
                t0 = time.perf_counter()
                nursery.start_soon(
                    functools.partial(
                        status2.run,
                        connect("privcmd.sock"),
                        state_dir,
                        PagerConfig(batch=256, target=nr - pages, on_exit="keep"),
                    )
                )
                await served.wait()
                out["recovery_to_first_served_s"] = time.perf_counter() - t0
                assert status2.pager is not None
                out["pager_recovery_s"] = status2.pager.stats.recovery_s
                out["recovered_rows"] = status2.pager.stats.recovered_rows
                status2.stop.set()
                await status2.finished.wait()
            nursery.cancel_scope.cancel()
    finally:
        hv.close()
    return out


async def run_bench(
    batches: tuple[int, ...] = (1, 16, 64, 256),
    pages: int = 20000,
    pages_batch1: int = 2000,
    vcpus: int = 64,
    recovery_pages: int = 100_000,
    process: bool = True,
) -> dict[str, Any]:
    """Run every measurement; a dict of results (see the module docstring)."""
    results: dict[str, Any] = {"throughput": [], "recovery": None, "recovery_process": None}
    for batch in batches:
        with tempfile.TemporaryDirectory(prefix="pager-bench-") as tmp:
            n = pages_batch1 if batch == 1 else pages
            results["throughput"].append(await _throughput(batch, n, vcpus, Path(tmp)))
    if recovery_pages:
        with tempfile.TemporaryDirectory(prefix="pager-bench-") as tmp:
            results["recovery"] = await _recovery(recovery_pages, Path(tmp))
    if recovery_pages and process:
        with tempfile.TemporaryDirectory(prefix="pager-bench-") as tmp:
            results["recovery_process"] = await recovery_process(recovery_pages, Path(tmp))
    return results


def main(argv: list[str] | None = None) -> int:
    """Parse options, run, print a table (or JSON)."""
    p = argparse.ArgumentParser(
        prog="python -m stack.bench.inproc", description=__doc__.split("\n")[0]
    )
    p.add_argument("--batches", default="1,16,64,256")
    p.add_argument("--pages", type=int, default=20000, help="gfns per throughput run")
    p.add_argument("--pages-batch1", type=int, default=2000, help="gfns for batch size 1")
    p.add_argument("--vcpus", type=int, default=64, help="guest vCPUs faulting pages in")
    p.add_argument("--recovery-pages", type=int, default=100_000, help="0 to skip")
    p.add_argument("--no-process", action="store_true", help="skip the real-process recovery")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        batches = tuple(int(b) for b in args.batches.split(","))
    except ValueError:
        print("stack.bench.inproc: --batches is a comma-separated list of ints", file=sys.stderr)
        return 2
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        cache_logger_on_first_use=True,
    )
    res = trio.run(
        run_bench,
        batches,
        args.pages,
        args.pages_batch1,
        args.vcpus,
        args.recovery_pages,
        not args.no_process,
    )
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(
        f"{'batch':>5} {'pages':>7} {'out p/s':>9} {'in p/s (target)':>16} {'in p/s (faults)':>16}"
    )
    for r in res["throughput"]:
        print(
            f"{r['batch']:>5} {r['pages']:>7} {r['pageout_pps']:>9.0f} "
            f"{r['pagein_proactive_pps']:>16.0f} {r['pagein_faults_pps']:>16.0f}"
        )
    rec = res["recovery"]
    if rec:
        print(
            f"recovery with {rec['paged_out']} pages out: {rec['recovery_to_first_served_s']:.3f}"
            f" s to the first served request (pager recovery {rec['pager_recovery_s']:.3f} s)"
        )
    proc = res["recovery_process"]
    if proc:
        print(
            f"recovery, real processes, {proc['paged_out']} pages out: "
            f"{proc['process_start_to_first_served_s']:.3f} s from `python -m pager` to the "
            f"first served request; page-out {proc['pageout_pps']:.0f} p/s, proactive page-in "
            f"{proc['pagein_proactive_pps']:.0f} p/s, fault page-in {proc['pagein_faults_pps']:.0f}"
            " p/s (batch 256, hv and pager as processes)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
