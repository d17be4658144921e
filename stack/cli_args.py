"""`xpemu`'s command line: every subcommand's arguments (the commands themselves are in
cli.py and the modules it names)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import NoReturn

from guest import PATTERNS
from pager.policy import POLICIES
from protocol import RingMode

from .argtypes import nonneg_int, positive_float, positive_int
from .power import POWER_SPACING
from .schedule import DEFAULT_KINDS

EXIT_USAGE = 2

#: Default seconds between two scheduled faults in `stress` (when --faults is not given).
FAULT_SPACING = 1.2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line and exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _command(text: str) -> list[str]:
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad command {text!r}: {exc}") from None
    if not argv:
        raise argparse.ArgumentTypeError("empty command")
    return argv


def _policy(text: str) -> str:
    from pager.policy import PolicyLoadError, check_policy

    try:
        check_policy(text)
    except PolicyLoadError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_stack_options(p: argparse.ArgumentParser, *, stress: bool) -> None:
    p.add_argument("--run-dir", type=Path, help="run directory (default: a fresh temp dir)")
    p.add_argument(
        "--duration",
        type=positive_float,
        default=30.0 if stress else None,
        help="seconds for the whole run, checks included (default: "
        + ("30" if stress else "until Ctrl-C")
        + ")",
    )
    p.add_argument(
        "--nr-gfns",
        type=positive_int,
        default=2048 if stress else 4096,
        help="guest size in 4 KiB pages (default: %(default)s)",
    )
    p.add_argument("--target", type=nonneg_int, help="domain target (default: half the gfns)")
    p.add_argument("--vcpus", type=positive_int, default=4, help="guest vCPUs (default: 4)")
    p.add_argument("--host-frames", type=positive_int, help="host frames (default: hv's)")
    p.add_argument(
        "--ring-size",
        type=positive_int,
        help="mem_event slots (default: 64; 8, one Xen ring page, with --pager xenpaging)",
    )
    p.add_argument(
        "--ring-mode",
        choices=[m.value for m in RingMode],
        default="reattach",
        help="reattach: a new pager inherits the ring; xen: a lost pager orphans it",
    )
    p.add_argument(
        "--pattern", choices=PATTERNS, default="hotset", help="guest access pattern (hotset)"
    )
    p.add_argument("--write-ratio", type=float, default=0.3, help="share of writes (0.3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the workload (and faults)")
    p.add_argument(
        "--policy",
        type=_policy,
        help=f"pager policy: {', '.join(POLICIES)}, or a plug-in package.module:Class",
    )
    p.add_argument(
        "--reserve",
        type=nonneg_int,
        metavar="PAGES",
        help="free frames the pager keeps below the target (its --reserve; default: two "
        "batches; 0 holds the target exactly)",
    )
    p.add_argument(
        "--record-trace",
        type=Path,
        metavar="FILE",
        help="hv records every guest access here (gfn, read/write, vCPU, time); replay it "
        "with `xpemu policy --trace FILE`",
    )
    p.add_argument(
        "--stuck-after",
        type=positive_float,
        default=10.0,
        help="seconds an access may stay pending before its vCPU counts as stuck",
    )
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument(
        "--report-html", type=Path, help="write the HTML timeline of the run here (xpemu report)"
    )
    p.add_argument("--no-live", action="store_true", help="plain progress lines, no live view")
    p.add_argument(
        "--start-timeout",
        type=positive_float,
        default=15.0,
        help="seconds for hv to be ready and the pager to attach (15)",
    )
    p.add_argument("--hv-cmd", type=_command, help="command that runs hv (default: python -m hv)")
    p.add_argument("--pager-cmd", type=_command, help="command that runs the pager")
    p.add_argument(
        "--pager",
        choices=("xpemu", "xenpaging"),
        default="xpemu",
        help="xpemu's pager, or Xen 4.17's own xenpaging over xenshim (`make xenpaging`)",
    )
    p.add_argument("--guest-cmd", type=_command, help="command that runs the guest")


def build_parser() -> argparse.ArgumentParser:
    """The whole `xpemu` command line."""
    p = _Parser(prog="xpemu", description="An emulated Xen memory-paging stack.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    up = sub.add_parser("up", help="run hv, pager and guest; Ctrl-C (or --duration) stops")
    _add_stack_options(up, stress=False)
    stress = sub.add_parser("stress", help="the same under a seeded fault schedule")
    _add_stack_options(stress, stress=True)
    stress.add_argument(
        "--faults",
        type=nonneg_int,
        help=f"faults to inject (default: one per {FAULT_SPACING} s, {POWER_SPACING} s with power)",
    )
    stress.add_argument(
        "--kinds",
        default=",".join(f"{k}={w}" for k, w in DEFAULT_KINDS.items()),
        help="fault kinds and weights (default: %(default)s)",
    )
    stress.add_argument(
        "--schedule-only", action="store_true", help="print the schedule as JSON and exit"
    )
    st = sub.add_parser("status", help="the xl list / xentop view of a running hv")
    st.add_argument("--run-dir", type=Path, required=True, help="hv's run directory")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument(
        "--watch",
        nargs="?",
        const=1.0,
        type=positive_float,
        help="refresh every N seconds (default 1) until Ctrl-C",
    )
    rep = sub.add_parser("report", help="one HTML page of a run's (or sim trace's) timeline")
    rep.add_argument("run_dir", type=Path, help="a run directory or a `xpemu sim --trace` file")
    rep.add_argument(
        "-o", "--output", type=Path, help="the HTML file (default: RUN_DIR/report.html)"
    )
    sim = sub.add_parser("sim", help="the whole stack in one process under one seed (SIM.md)")
    from . import sim_cmd as _sim_cmd

    _sim_cmd.add_arguments(sim)
    camp = sub.add_parser("campaign", help="many sim seeds on Dask, with a ledger (issue 17)")
    from . import campaign as _campaign

    _campaign.add_arguments(camp)
    pol = sub.add_parser(
        "policy", help="replacement policies on a trace, beside the optimum; miss-ratio curves"
    )
    from . import policy_cmd as _policy_cmd

    _policy_cmd.add_arguments(pol)
    bench = sub.add_parser("bench", help="performance figures, each next to its floor")
    from . import bench as _bench

    _bench.add_arguments(bench)
    return p
