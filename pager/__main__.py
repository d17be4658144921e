"""``python -m pager``: the pager as a process (PROTOCOL.md §10).

Exit status: 0 after a clean exit (SIGTERM/SIGINT: paged everything in and detached, or
left the store durable with ``--on-exit keep``); 1 when the pager cannot go on (refused
hello, locked store, failed exit); 2 on bad usage; 75 (EX_TEMPFAIL) when the connection to
hv is lost: the stack restarts the pager, which recovers from ``--state-dir``. A crash
point dies by SIGKILL (status -9 / 137).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Final

import structlog
import trio

from transport import configure_logging

from .commit import open_store
from .config import ConnectionLost, PagerConfig, PagerError
from .core import find_exception, run_pager
from .faults import ENV_VAR, FaultSpecError, parse_faults
from .net import connect_privcmd
from .policy import POLICIES
from .realdisk import RealDisk

#: Exit status when hv went away: "try again later" (sysexits.h EX_TEMPFAIL).
EXIT_CONNECTION_LOST: Final = 75

log = structlog.get_logger("pager")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not >= 1")
    return value


def _nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of PROTOCOL.md §10, plus tunables."""
    p = argparse.ArgumentParser(
        prog="python -m pager",
        description="xenpaging-style pager with a durable store",
        epilog="exit status: 0 clean exit, 1 cannot go on, 2 bad usage, 75 lost hv "
        "(restart me); a crash point dies by SIGKILL",
    )
    p.add_argument("--run-dir", required=True, help="hv's run directory (privcmd.sock)")
    p.add_argument("--state-dir", required=True, help="the paging store's directory")
    p.add_argument("--domid", type=_nonneg_int, default=1, help="domain to page (default 1)")
    p.add_argument(
        "--policy",
        default="xenpaging",
        help=f"{', '.join(POLICIES)} (default: xenpaging), or a plug-in package.module:Class "
        "(docs/policy.md)",
    )
    p.add_argument(
        "--on-exit",
        choices=("pagein", "keep"),
        default="pagein",
        help="on SIGTERM/SIGINT: page everything in and detach, or keep pages out",
    )
    p.add_argument(
        "--faults",
        default=None,
        help=f"fault spec (see pager/faults.py), else ${ENV_VAR}; e.g. after_write@3",
    )
    p.add_argument("--batch", type=_positive_int, default=64, help="gfns per batch (<= 256)")
    p.add_argument(
        "--concurrency",
        type=_positive_int,
        default=4,
        help="page-in batches at once (as many worker tasks)",
    )
    p.add_argument(
        "--pipeline",
        type=_positive_int,
        default=32,
        help="page-out (and proactive page-in) batches in flight at once",
    )
    p.add_argument("--target", type=_nonneg_int, default=None, help="override hv's target")
    p.add_argument(
        "--reserve",
        type=_nonneg_int,
        default=None,
        help="free frames kept below the target, refilled in batches (default: 2 batches)",
    )
    p.add_argument(
        "--prefetch", type=_nonneg_int, default=0, help="paged neighbours to bring in per fault"
    )
    p.add_argument("--mru-size", type=_positive_int, default=None, help="xenpaging MRU length")
    p.add_argument("--connect-timeout", type=float, default=30.0, help="wait for hv (s)")
    p.add_argument("--hello-timeout", type=float, default=10.0, help="retry EBUSY hello (s)")
    p.add_argument("--lock-timeout", type=float, default=10.0, help="wait for the store (s)")
    p.add_argument("--drain-timeout", type=float, default=60.0, help="page-in at exit (s)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


async def _main(args: argparse.Namespace, config: PagerConfig, faults_spec: str) -> int:
    faults = parse_faults(faults_spec)
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            connecting = trio.CancelScope()

            async def on_signal() -> None:
                async for signum in signals:
                    log.info("pager.signal", signal=signal.Signals(signum).name)
                    stop.set()
                    connecting.cancel()  # still waiting for hv: nothing to page in, just go

            nursery.start_soon(on_signal)
            stream = None
            with connecting:
                stream = await connect_privcmd(args.run_dir, args.connect_timeout)
            if stream is not None:
                try:
                    store = await open_store(
                        RealDisk(args.state_dir), faults=faults, lock_timeout=config.lock_timeout
                    )
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
                await run_pager(stream, store, config, faults=faults, stop=stop)
            nursery.cancel_scope.cancel()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, configure logging, run the pager; the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging("pager", level=args.log_level)
    spec = args.faults if args.faults is not None else os.environ.get(ENV_VAR, "")
    try:
        parse_faults(spec)
        config = PagerConfig(
            domid=args.domid,
            policy=args.policy,
            on_exit=args.on_exit,
            batch=args.batch,
            concurrency=args.concurrency,
            pipeline=args.pipeline,
            target=args.target,
            reserve=2 * args.batch if args.reserve is None else args.reserve,
            prefetch=args.prefetch,
            mru_size=args.mru_size,
            hello_timeout=args.hello_timeout,
            lock_timeout=args.lock_timeout,
            drain_timeout=args.drain_timeout,
        )
    except (FaultSpecError, ValueError) as exc:
        print(f"pager: {exc}", file=sys.stderr)
        return 2
    try:
        return trio.run(_main, args, config, spec)
    except BaseException as exc:
        # The signal nursery wraps what run_pager raised: unwrap it for one clear line.
        lost = find_exception(exc, ConnectionLost)
        if lost is not None:
            log.error("pager.connection_lost", error=str(lost))
            return EXIT_CONNECTION_LOST
        error = find_exception(exc, PagerError)
        if error is not None:
            log.error("pager.failed", error=str(error))
            return 1
        raise


if __name__ == "__main__":
    from transport.malloc import tune_malloc

    tune_malloc()  # a heap that does not creep over days (transport/malloc.py)
    sys.exit(main())
