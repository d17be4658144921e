"""`python -m hv --run-dir DIR ...`: create domain 1 and serve until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import NoReturn

import structlog
import trio

from protocol import DEFAULT_RING_SIZE, RingMode
from transport import configure_logging

from .config import HvConfig
from .hypervisor import Hypervisor
from .server import serve
from .trace import TraceRecorder

log = structlog.get_logger("hv")

#: sun_path holds 108 bytes on Linux, the terminating NUL included.
_SUN_PATH_MAX = 108


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _mmio(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(g) for g in text.split(",") if g.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of gfns: {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m hv",
        description="The emulated hypervisor's paging path: serves privcmd.sock (0600) and "
        "guest.sock (0660) in --run-dir until SIGTERM or SIGINT, then removes them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--run-dir", required=True, help="directory for the two Unix sockets")
    p.add_argument("--nr-gfns", type=int, default=4096, help="gfns of domain 1")
    p.add_argument("--vcpus", type=int, default=2, help="vCPUs of domain 1")
    p.add_argument(
        "--host-frames",
        type=int,
        default=None,
        help="host frames (default: nr_gfns + nr_gfns/4 + 64)",
    )
    p.add_argument("--ring-size", type=int, default=DEFAULT_RING_SIZE, help="mem_event slots")
    p.add_argument(
        "--ring-mode",
        choices=[m.value for m in RingMode],
        default=RingMode.reattach.value,
        help="reattach: a new pager gets every unanswered request; xen: a lost pager "
        "orphans the ring",
    )
    p.add_argument("--mmio-gfns", type=_mmio, default=(), help="comma-separated mmio gfns")
    p.add_argument(
        "--target", type=int, default=None, help="domain 1's target (default: initial tot_pages)"
    )
    p.add_argument(
        "--record-trace",
        metavar="FILE",
        default=None,
        help="record domain 1's guest accesses to FILE (hv/trace.py's format)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


async def _run(hv: Hypervisor, run_dir: str) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, hv, run_dir)
            recorder = hv.domains[1].recorder
            if recorder is not None:  # --record-trace: blocks sealed in a worker thread
                await nursery.start(recorder.run)
            log.info(
                "hv.ready",
                run_dir=run_dir,
                nr_gfns=hv.config.nr_gfns,
                host_frames=hv.pool.nr_frames,
                ring_size=hv.config.ring_size,
                ring_mode=hv.config.ring_mode,
                pid=os.getpid(),
            )
            async for signum in signals:
                log.info("hv.stopping", signal=signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, create domain 1, serve; the process's exit status."""
    args = _parser().parse_args(argv)
    config = HvConfig(
        nr_gfns=args.nr_gfns,
        vcpus=args.vcpus,
        host_frames=args.host_frames,
        ring_size=args.ring_size,
        ring_mode=args.ring_mode,
        mmio_gfns=args.mmio_gfns,
        target=args.target,
    )
    try:
        config.validate()
    except ValueError as exc:
        print(f"python -m hv: error: {exc}", file=sys.stderr)
        return 2
    longest = os.path.join(os.path.abspath(args.run_dir), "privcmd.sock")
    if len(longest.encode()) >= _SUN_PATH_MAX:
        print(
            f"python -m hv: error: --run-dir is too long for a Unix socket path ({longest})",
            file=sys.stderr,
        )
        return 2
    try:
        os.makedirs(args.run_dir, exist_ok=True)
    except OSError as exc:
        print(f"python -m hv: error: cannot create --run-dir: {exc}", file=sys.stderr)
        return 1
    configure_logging("hv", level=args.log_level)
    hv = Hypervisor(config)
    recorder = None
    if args.record_trace is not None:
        try:
            recorder = TraceRecorder(
                args.record_trace, nr_gfns=config.nr_gfns, vcpus=config.vcpus, domid=1
            )
        except OSError as exc:
            hv.close()
            print(f"python -m hv: error: cannot record the trace: {exc}", file=sys.stderr)
            return 1
        hv.domains[1].recorder = recorder
    failed: list[str] = []
    try:
        trio.run(_run, hv, args.run_dir)
    except* OSError as group:  # binding a socket failed: one line, not a traceback
        failed = [str(e) for e in group.exceptions]
    finally:
        hv.close()
        if recorder is not None:
            recorder.close()
            log.info(
                "hv.trace_recorded",
                path=args.record_trace,
                records=recorder.records,
                blocks=recorder.blocks,
            )
    if failed:
        log.error("hv.failed", error="; ".join(failed))
        print(f"python -m hv: error: {'; '.join(failed)}", file=sys.stderr)
        return 1
    log.info("hv.stopped")
    return 0


if __name__ == "__main__":
    from transport.malloc import tune_malloc

    tune_malloc()  # a heap that does not creep over days (transport/malloc.py)
    sys.exit(main())
