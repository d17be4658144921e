"""`xpemu policy`: the policy lab. Replays a trace (recorded with `xpemu up --record-trace`,
or synthetic: zipf, hotset, scan) through every policy, plug-ins included, at several
memory sizes, beside Belady's optimum, A0 (Zipf), exact LRU, ARC and perfect LFU; prints
the table and draws the miss-ratio curves. Exit status: 0 done, 1 a policy misbehaved, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pager.policy import POLICIES, PolicyLoadError, check_policy

from .argtypes import positive_int

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

#: Memory sizes tried when none are given, as fractions of the gfns the trace touches.
DEFAULT_FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)


def _policy_spec(text: str) -> str:
    try:
        check_policy(text)
    except PolicyLoadError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _sizes(text: str) -> list[str]:
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("no memory size given")
    for s in parts:
        try:
            ok = 0 < float(s[:-1]) if s.endswith("%") else s.isdigit() and int(s) >= 1
        except ValueError:
            ok = False
        if not ok:
            raise argparse.ArgumentTypeError(
                f"memory size {s!r} is not a frame count >= 1 or a percentage like 12.5%"
            )
    return parts


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `xpemu policy`."""
    p.add_argument(
        "--trace",
        default="zipf",
        help="a trace file (`xpemu up --record-trace`, or .npy of gfns), or a synthetic"
        " trace: zipf, hotset, scan (default: zipf)",
    )
    p.add_argument(
        "--policy",
        action="append",
        type=_policy_spec,
        default=[],
        metavar="SPEC",
        help="a policy to add: a built-in name or a plug-in package.module:Class (repeatable)",
    )
    p.add_argument(
        "--only", action="store_true", help="only the --policy ones, not every built-in too"
    )
    p.add_argument(
        "--sizes",
        type=_sizes,
        help="memory sizes, frames or %% of the gfns the trace touches (default: 12.5%%,25%%,"
        "...,75%%)",
    )
    p.add_argument("--gfns", type=positive_int, default=8192, help="synthetic: gfns (8192)")
    p.add_argument(
        "--length", type=positive_int, default=100_000, help="synthetic: accesses (100,000)"
    )
    p.add_argument("--seed", type=int, default=11, help="synthetic: seed (11)")
    p.add_argument(
        "--start",
        choices=("empty", "full"),
        default="empty",
        help="memory at the start: empty (as Belady's count), or every gfn resident and"
        " shrunk to the size first, as a pager attaching to a running domain",
    )
    p.add_argument(
        "--whole",
        action="store_true",
        help="recorded traces: replay every access, not only those up to the last fault hv"
        " saw (after it the live pager held memory below its size no more)",
    )
    p.add_argument(
        "--plot",
        type=Path,
        default=Path("policy-curves.png"),
        help="the miss-ratio curves, .png or .svg (default: policy-curves.png)",
    )
    p.add_argument("--json", type=Path, dest="json_path", help="write every figure here")


def _fail(msg: str, code: int = EXIT_USAGE) -> int:
    print(f"xpemu: error: {msg}", file=sys.stderr, flush=True)
    return code


def _resolve_sizes(texts: list[str] | None, distinct: int) -> list[int]:
    if texts is None:
        return sorted({max(1, round(distinct * f)) for f in DEFAULT_FRACTIONS})
    out = set()
    for s in texts:
        out.add(max(1, round(distinct * float(s[:-1]) / 100)) if s.endswith("%") else int(s))
    return sorted(out)


def main(args: argparse.Namespace) -> int:
    """`xpemu policy`: the exit status."""
    from .policylab.compare import compare, plot_curves, render_table
    from .policylab.replay import ReplayError
    from .policylab.traces import SYNTHETIC, TraceError, read_trace, synthetic

    if args.plot.suffix.lower() not in (".png", ".svg"):
        return _fail(f"--plot {args.plot}: the file must end in .png or .svg")
    for out in (args.plot, args.json_path):
        if out is not None and not out.absolute().parent.is_dir():
            return _fail(f"no directory {out.absolute().parent} for {out}")
    t0 = time.perf_counter()
    try:
        if args.trace in SYNTHETIC:
            trace = synthetic(args.trace, args.gfns, args.length, args.seed)
        else:
            trace = read_trace(Path(args.trace))
    except TraceError as exc:
        return _fail(str(exc))
    if "dropped" in trace.info:  # a last block cut short: the whole ones are replayed
        print(f"xpemu: warning: {trace.info['dropped']}", file=sys.stderr, flush=True)
    note = ""
    if trace.live_span is not None and not args.whole and trace.live_span < len(trace.gfns):
        note = (
            f"  replaying the first {trace.live_span:,} of {len(trace.gfns):,} accesses: after"
            " the last fault hv saw, the pager held memory below its size no more (--whole:"
            " all)\n"
        )
        trace.gfns = trace.gfns[: trace.live_span]
    sizes = _resolve_sizes(args.sizes, trace.distinct)
    if sizes[-1] > trace.nr_gfns:
        return _fail(f"memory size {sizes[-1]:,} is larger than the trace's {trace.nr_gfns:,} gfns")
    policies = list(dict.fromkeys([*(() if args.only else POLICIES), *args.policy]))
    if not policies:
        return _fail("--only with no --policy: nothing to run")
    print(
        f"xpemu policy: {trace.name}, {len(trace.gfns):,} accesses over {trace.distinct:,}"
        f" gfns (of {trace.nr_gfns:,}); memory sizes {', '.join(f'{c:,}' for c in sizes)};"
        f" memory starts {args.start}",
        flush=True,
    )
    if trace.live_faults is not None:
        i = trace.info
        print(
            f"  recorded: {i['records']:,} accesses ({i['writes']:,} writes, {i['refused']:,}"
            f" refused) by {i['vcpus']} vCPUs in {i['seconds']:.1f} s; the live pager's"
            f" faults: {trace.live_faults:,}",
            flush=True,
        )
    print(note, end="", flush=True)
    try:
        cmp = compare(trace, policies, sizes, start=args.start, say=lambda s: print(s, flush=True))
    except (ReplayError, PolicyLoadError) as exc:
        return _fail(str(exc), EXIT_FAILED)
    print("\nfaults per 1,000 accesses (x Belady's optimum at that size)")
    print(render_table(cmp))
    if trace.live_faults is not None:
        print(
            f"the live pager saw {trace.live_faults:,} faults:"
            f" {trace.live_faults * 1000 / len(trace.gfns):.1f} per 1,000 accesses, at its"
            " target (compare with its row at that size, --start full)"
        )
    try:
        plot_curves(cmp, args.plot)
        if args.json_path is not None:
            args.json_path.write_text(json.dumps(cmp.as_dict(), indent=2) + "\n")
    except OSError as exc:
        return _fail(f"cannot write: {exc}", EXIT_FAILED)
    print(f"\nmiss-ratio curves: {args.plot} ({time.perf_counter() - t0:.1f} s)")
    return EXIT_OK
