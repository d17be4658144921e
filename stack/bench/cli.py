"""`xpemu bench`'s command line: options, the run, the table, the JSON (`--soak`: soak.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import trio

from pager.policy import POLICIES

from ..argtypes import positive_float, positive_int
from .options import SECTIONS, BenchError, BenchOptions
from .run import run_bench
from .table import render_table


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `xpemu bench`."""
    p.add_argument("--full", action="store_true", help="the long version (100,000-page recovery)")
    p.add_argument(
        "--soak",
        type=positive_float,
        metavar="MINUTES",
        help="instead: the stack at full load this long, each process's RSS growth per hour",
    )
    p.add_argument("--json", type=Path, dest="json_path", help="write every figure here")
    p.add_argument("--repeats", type=positive_int, help="runs per figure (3 quick, 5 full)")
    p.add_argument(
        "--only",
        type=_sections,
        help=f"comma-separated: {','.join(SECTIONS)} (default: all but campaign; --full: all)",
    )
    p.add_argument(
        "--policy",
        action="append",
        default=[],
        dest="extra_policies",
        type=_policy_spec,
        metavar="SPEC",
        help="the policy section also runs this plug-in package.module:Class (repeatable)",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        help="stores and floor files in a new directory in here (the disk to measure)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        help="record hv, pager and guest with py-spy (the profile extra) into this dir: raw"
        " stacks (profile-summary) and one flame graph SVG per process",
    )


def _policy_spec(text: str) -> str:
    from pager.policy import PolicyLoadError, check_policy

    try:
        check_policy(text)
    except PolicyLoadError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _sections(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in SECTIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section {', '.join(bad) or '(none)'}: choose from {','.join(SECTIONS)}"
        )
    return names


def main(args: argparse.Namespace) -> int:
    """`xpemu bench`: run, print the table, write the JSON; the exit status."""
    from transport import configure_logging

    if args.json_path is not None and not args.json_path.parent.is_dir():
        print(f"xpemu: error: no directory {args.json_path.parent} for --json", file=sys.stderr)
        return 2
    if args.profile is not None and not Path(sys.executable).with_name("py-spy").exists():
        print(
            "xpemu: error: --profile needs py-spy in the venv (pip install '.[profile]')",
            file=sys.stderr,
        )
        return 2
    configure_logging("xpemu-bench", level="warning")
    if args.soak is not None:
        from . import soak  # soak.py: its own run and table

        return soak.main(args.soak, args.work_dir, args.json_path)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    opts = BenchOptions(
        full=args.full,
        repeats=args.repeats,
        only=args.only,
        work_dir=args.work_dir,
        profile=args.profile,
        policies=tuple(dict.fromkeys((*POLICIES, *args.extra_policies))),
    )

    def say(text: str) -> None:
        print(text, flush=True)

    try:
        res = trio.run(run_bench, opts, say)
    except BenchError as exc:
        print(f"xpemu: error: bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("xpemu: error: bench interrupted; every child stopped", file=sys.stderr)
        return 130
    say("")
    say(render_table(res))
    if args.json_path is not None:
        try:
            args.json_path.write_text(json.dumps(res, indent=2, default=str) + "\n")
        except OSError as exc:
            print(f"xpemu: error: cannot write {args.json_path}: {exc.strerror}", file=sys.stderr)
            return 1
    return 0
