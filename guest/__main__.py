"""`python -m guest`: connect to hv's guest.sock and run the workload (PROTOCOL.md §10).

Exit status: 0 when every byte checked out, 1 on any integrity error, stuck vCPU or
unexpected error, 2 on bad input or when hv cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

import structlog
import trio

from protocol import OpError, ProtocolError
from transport import ConnectionClosed, configure_logging, open_client

from .config import GuestConfig
from .patterns import PATTERNS
from .report import GuestReport
from .shadow import Shadow
from .workload import run_workload, verify_all

log = structlog.get_logger("guest")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line and exit 2, as every xpemu command does on bad input."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m guest`."""
    p = _Parser(prog="python -m guest", description="Guest workload: read, write, verify.")
    p.add_argument("--run-dir", required=True, help="hv's run directory (holds guest.sock)")
    p.add_argument("--domid", type=int, default=1, help="domain to run in (default 1)")
    p.add_argument("--vcpus", type=int, default=None, help="vCPUs to run (default: all)")
    p.add_argument("--pattern", choices=PATTERNS, default="zipf", help="access pattern")
    p.add_argument("--seed", type=int, default=0, help="seed of patterns and page contents")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of workload")
    p.add_argument("--ops", type=int, default=None, help="stop after this many accesses")
    p.add_argument("--write-ratio", type=float, default=0.3, help="share of writes (0..1)")
    p.add_argument("--zipf-s", type=float, default=1.1, help="Zipf skew")
    p.add_argument("--hot-fraction", type=float, default=0.1, help="hot set share of memory")
    p.add_argument("--hot-shift", type=float, default=2.0, help="seconds between hot-set shifts")
    p.add_argument("--balloon-every", type=float, default=1.0, help="seconds; 0 disables")
    p.add_argument("--balloon-count", type=int, default=2, help="gfns per balloon round")
    p.add_argument("--fault-ms", type=float, default=2.0, help="slower accesses count as faults")
    p.add_argument(
        "--stuck-after", type=float, default=10.0, help="seconds pending before a vCPU is stuck"
    )
    p.add_argument("--no-verify", action="store_true", help="skip the final read of every gfn")
    p.add_argument("--verify-only", action="store_true", help="only verify against --shadow")
    p.add_argument("--shadow", help="save the shadow here at the end (load it: --verify-only)")
    p.add_argument("--report", help="write the JSON report to this file")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for hv")
    p.add_argument("--log-level", default="info", help="debug, info, warning, error")
    return p


async def _connect_wait(path: str) -> trio.SocketStream:
    """Connect to `path`, waiting for hv to create it (the caller bounds the wait)."""
    delay = 0.02
    while True:
        try:
            return await trio.open_unix_socket(path)
        except (FileNotFoundError, ConnectionRefusedError):
            await trio.sleep(delay)
            delay = min(delay * 2, 0.5)


async def _main(args: argparse.Namespace, config: GuestConfig) -> GuestReport:
    path = os.path.join(args.run_dir, "guest.sock")
    stop = trio.Event()
    try:
        with trio.fail_after(args.connect_timeout):
            stream = await _connect_wait(path)
    except trio.TooSlowError:
        raise _Fatal(f"no hv at {path} after {args.connect_timeout:g} s") from None
    report: GuestReport | None = None
    async with open_client(stream, "guest") as client, trio.open_nursery() as nursery:
        nursery.start_soon(_on_signals, stop, nursery.cancel_scope)
        try:
            await client.hello(args.domid)
        except OpError as exc:
            raise _Fatal(f"hello refused: {exc}") from None
        if args.verify_only:
            shadow = Shadow.load(args.shadow)
            report = await verify_all(client, shadow, stuck_after=config.stuck_after)
        else:
            shadow = Shadow(client.info["nr_gfns"], config.seed)
            report = await run_workload(client, config, stop=stop, shadow=shadow)
            if args.shadow:
                shadow.save(args.shadow)
        nursery.cancel_scope.cancel()
    if report is None:
        raise _Fatal("aborted by a second signal before the report was ready")
    return report


class _Fatal(Exception):
    """A one-line reason to give up (exit 2)."""


async def _on_signals(stop: trio.Event, scope: trio.CancelScope) -> None:
    """First SIGTERM/SIGINT: finish the workload early and verify; second: give up."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if stop.is_set():
                log.warning("guest.abort", signal=signal.Signals(signum).name)
                scope.cancel()
                return
            log.info("guest.stop_requested", signal=signal.Signals(signum).name)
            stop.set()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    config = GuestConfig(
        seed=args.seed,
        pattern=args.pattern,
        vcpus=args.vcpus,
        duration=args.duration,
        ops=args.ops,
        write_ratio=args.write_ratio,
        zipf_s=args.zipf_s,
        hot_fraction=args.hot_fraction,
        hot_shift_s=args.hot_shift,
        balloon_every=args.balloon_every,
        balloon_count=args.balloon_count,
        fault_ms=args.fault_ms,
        stuck_after=args.stuck_after,
        verify=not args.no_verify,
    )
    prog = "python -m guest"
    try:
        config.check()
        if args.verify_only and not args.shadow:
            raise ValueError("--verify-only needs --shadow FILE")
        if args.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"unknown log level {args.log_level!r}")
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging("guest", level=args.log_level, domid=args.domid)
    try:
        report = trio.run(_main, args, config)
    except _Fatal as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ConnectionClosed, ProtocolError) as exc:
        print(f"{prog}: error: connection to hv lost: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    if args.report:
        try:
            Path(args.report).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        except OSError as exc:
            print(f"{prog}: error: cannot write report: {exc}", file=sys.stderr)
            return EXIT_USAGE
    print(report.summary())
    return EXIT_OK if report.ok else EXIT_FAILED


if __name__ == "__main__":
    from transport.malloc import tune_malloc

    tune_malloc()  # a heap that does not creep over days (transport/malloc.py)
    sys.exit(main())
