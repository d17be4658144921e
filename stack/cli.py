"""`xpemu`: run the stack (`up`), break it (`stress`), simulate it (`sim`), see it (`status`,
`report`).

Exit status: 0 when every check passed, 1 when a check failed (lost or wrong bytes, stuck
vCPUs, invariant violations), 2 on bad input or a stack that cannot start, 130 when
interrupted twice, 141 when the reader of its output went away (a pipe closed early). Errors
are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from protocol import ProtocolError
from transport import ConnectionClosed, configure_logging, open_unix_client
from transport.logs import CappedLog

from .cli_args import EXIT_USAGE, FAULT_SPACING, build_parser
from .errors import StackError
from .harness import run_stack
from .options import StackOptions
from .power import POWER_KINDS, POWER_SPACING, fuse_problem
from .procs import LOG_MAX_BYTES
from .report import summary_text
from .rundir import prepare_run_dir
from .schedule import make_schedule, parse_kinds
from .status import rates_between, status_lines, status_table
from .xenpaging import XEN_RING_SLOTS
from .xenpaging import missing as xenpaging_missing

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell shows for a piped reader gone


def _say(text: str) -> None:
    print(text, flush=True)


def _fail(msg: str, code: int = EXIT_USAGE) -> int:
    print(f"xpemu: error: {msg}", file=sys.stderr, flush=True)
    return code


def _options(args: argparse.Namespace) -> StackOptions:
    opts = StackOptions(
        command=args.command,
        run_dir=args.run_dir,
        duration=args.duration,
        nr_gfns=args.nr_gfns,
        target=args.target,
        vcpus=args.vcpus,
        host_frames=args.host_frames,
        ring_size=args.ring_size or (XEN_RING_SLOTS if args.pager == "xenpaging" else 64),
        ring_mode=args.ring_mode,
        pattern=args.pattern,
        write_ratio=args.write_ratio,
        seed=args.seed,
        policy=args.policy,
        reserve=args.reserve,
        record_trace=args.record_trace.absolute() if args.record_trace else None,
        stuck_after=args.stuck_after,
        live=False if args.no_live else None,
        report=args.report,
        start_timeout=args.start_timeout,
        use_proxy=args.command == "stress",
    )
    if args.hv_cmd:
        opts.hv_cmd = args.hv_cmd
    if args.pager_cmd:
        opts.pager_cmd = args.pager_cmd
    if args.guest_cmd:
        opts.guest_cmd = args.guest_cmd
    if args.pager == "xenpaging":
        _use_xenpaging(args, opts)
    if not 0.0 <= args.write_ratio <= 1.0:
        raise StackError("--write-ratio must be within [0, 1]")
    if opts.effective_target > opts.nr_gfns:
        raise StackError("--target cannot exceed --nr-gfns")
    if opts.record_trace is not None and not opts.record_trace.parent.is_dir():
        raise StackError(f"--record-trace: no directory {opts.record_trace.parent}")
    return opts


def _use_xenpaging(args: argparse.Namespace, opts: StackOptions) -> None:
    """Run Xen's xenpaging (over xenshim) as the pager; StackError if it cannot run here."""
    if args.pager_cmd:
        raise StackError("--pager xenpaging and --pager-cmd exclude each other")
    if args.policy:
        raise StackError("--policy is xpemu's pager's; xenpaging has its own")
    if args.reserve is not None:
        raise StackError("--reserve is xpemu's pager's; xenpaging has its own")
    why = xenpaging_missing()
    if why is not None:
        raise StackError(why)
    opts.pager_cmd = [sys.executable, "-m", "stack.xenpaging"]
    opts.pager_kind = "xenpaging"


def _schedule(args: argparse.Namespace, opts: StackOptions) -> None:
    assert opts.duration is not None
    window = opts.guest_duration or opts.duration
    count = args.faults
    kinds = parse_kinds(args.kinds)
    if count is None:
        spacing = POWER_SPACING if kinds.get("power") else FAULT_SPACING  # power.py
        count = max(1, int((window - 3.0) / spacing))
    opts.schedule = make_schedule(args.seed, window, count=count, kinds=kinds, tail=2.0)


def _cmd_stack(args: argparse.Namespace) -> int:
    try:
        opts = _options(args)
        if args.command == "stress":
            _schedule(args, opts)
            if args.schedule_only:
                _say(
                    json.dumps(
                        {"seed": args.seed, "schedule": [f.to_dict() for f in opts.schedule]}
                    )
                )
                return EXIT_OK
            if any(parse_kinds(args.kinds).get(k) for k in POWER_KINDS):
                problem = fuse_problem()  # power.py: say so before starting anything
                if problem is not None:
                    return _fail(problem)
        opts.run_dir = prepare_run_dir(opts.run_dir, use_proxy=opts.use_proxy)
    except (StackError, ValueError) as exc:
        return _fail(str(exc))
    with CappedLog(opts.run_dir / "xpemu.log", LOG_MAX_BYTES) as stack_log:
        configure_logging("xpemu", stream=stack_log, json=True)
        if args.command == "stress":
            _say(f"xpemu stress: seed {opts.seed}, {len(opts.schedule)} faults scheduled")
            for fault in opts.schedule:
                _say(f"  {fault.describe()}")
        _say(f"xpemu {args.command}: run dir {opts.run_dir}")
        try:
            report = trio.run(run_stack, opts, _say)
        except StackError as exc:
            return _fail(str(exc))
        except KeyboardInterrupt:
            return _fail("interrupted; every child stopped", EXIT_INTERRUPTED)
    from .report_html import replay_argv

    report["replay"] = replay_argv(args.argv, args.seed)
    with contextlib.suppress(OSError):  # what `xpemu report` reads; the run is judged anyway
        (opts.run_dir / "report.json").write_text(json.dumps(report, default=str) + "\n")
    if opts.report is not None:
        try:
            opts.report.write_text(json.dumps(report, indent=2, default=str) + "\n")
        except OSError as exc:
            _say(summary_text(report))
            return _fail(f"cannot write the report to {opts.report}: {exc.strerror}")
    _say(summary_text(report))
    if args.report_html is not None:
        code = _cmd_report(opts.run_dir, args.report_html)
        if code != EXIT_OK:
            return code
    return EXIT_OK if report["ok"] else EXIT_FAILED


def _cmd_report(source: Path, out: Path | None) -> int:
    from .report_html import write_report
    from .timeline import NotARun, load

    try:
        tl = load(source)
    except NotARun as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot read {source}: {exc.strerror}")
    if out is None:
        out = (source if source.is_dir() else source.parent) / "report.html"
    try:
        write_report(tl, out)
    except OSError as exc:
        return _fail(f"cannot write the HTML report to {out}: {exc.strerror}")
    note = " (INCOMPLETE: the run wrote no report)" if tl.incomplete else ""
    _say(f"xpemu report: {out}{note}: {len(tl.faults)} faults, {len(tl.pauses)} pauses")
    return EXIT_OK


async def _fetch_status(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "privcmd.sock"
    async with open_unix_client(str(path), "control") as ctl:
        await ctl.hello()
        status = await ctl.call("status")
        try:
            counters = await ctl.call("counters")
        except Exception:  # an hv without the counters op still has a status
            counters = {"domains": []}
    status.pop("id", None)
    status.pop("ok", None)
    status["counters"] = {d["domid"]: d["counters"] for d in counters["domains"]}
    return status


async def _status(args: argparse.Namespace) -> None:
    from rich.console import Console

    console = Console()
    if args.watch is None:
        status = await _fetch_status(args.run_dir)
        _render(status, args.json, console)
        return
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            prev: tuple[float, dict[int, dict[str, int]]] | None = None
            live_view = None
            if console.is_terminal and not args.json:
                from rich.live import Live

                live_view = Live(console=console, refresh_per_second=4)
                live_view.start()
            try:
                while True:
                    status = await _fetch_status(args.run_dir)
                    now = trio.current_time()
                    if prev is not None:  # per second since the last look (xentop's rates)
                        rates = rates_between(prev[1], status["counters"], now - prev[0])
                        status["rates"] = {
                            k: {"out_s": round(o, 1), "in_s": round(i, 1)}
                            for k, (o, i) in rates.items()
                        }
                    prev = (now, status["counters"])
                    if live_view is not None:
                        live_view.update(status_table(status, status["counters"], _rates(status)))
                    else:
                        _render(status, args.json, console)
                    await trio.sleep(args.watch)
            finally:
                if live_view is not None:
                    live_view.stop()


def _rates(status: dict[str, Any]) -> dict[int, tuple[float, float]] | None:
    if "rates" not in status:
        return None
    return {k: (r["out_s"], r["in_s"]) for k, r in status["rates"].items()}


def _render(status: dict[str, Any], as_json: bool, console: Any) -> None:
    if as_json:
        print(json.dumps(status, default=str), flush=True)
    elif console.is_terminal:
        console.print(status_table(status, status["counters"], _rates(status)))
    else:
        for line in status_lines(status, _rates(status)):
            print(line, flush=True)


def _cmd_status(args: argparse.Namespace) -> int:
    sock = args.run_dir / "privcmd.sock"
    if not sock.exists():
        return _fail(f"no hv running in {args.run_dir} ({sock} does not exist)")
    try:
        trio.run(_status, args)
    except BaseExceptionGroup as group:
        exc = _leaf(group)
        if isinstance(exc, KeyboardInterrupt):
            return EXIT_OK
        return _fail(f"cannot read hv's status at {sock}: {exc}")
    except (OSError, ConnectionClosed, ProtocolError) as exc:
        return _fail(f"cannot read hv's status at {sock}: {exc}")
    return EXIT_OK


def _leaf(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `xpemu` console script; the exit status."""
    try:
        return _dispatch(argv)
    except BrokenPipeError:
        # The reader went away (`xpemu sim --seeds 1-100 | head -3`): stop quietly, as a
        # program killed by SIGPIPE would, and keep the interpreter's last flush from
        # raising again (the recipe of Python's signal module docs).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _dispatch(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command == "status":
        return _cmd_status(args)
    if args.command == "bench":
        from . import bench

        return bench.main(args)
    if args.command == "report":
        return _cmd_report(args.run_dir, args.output)
    if args.command == "sim":
        from . import sim_cmd

        return sim_cmd.main(args)
    if args.command == "policy":
        from . import policy_cmd

        return policy_cmd.main(args)
    if args.command == "campaign":
        from . import campaign

        return campaign.main(args)
    return _cmd_stack(args)


if __name__ == "__main__":
    sys.exit(main())
