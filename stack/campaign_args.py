"""`xpemu campaign`'s options: the parser's arguments, and what every seed runs under."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .argtypes import nonneg_int, positive_float, positive_int
from .sim_cmd import _seed_range


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def _kinds(text: str) -> str:
    from .schedule import parse_kinds

    try:
        parse_kinds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `xpemu campaign` options."""
    from protocol import RingMode
    from sim import SCENARIOS

    p.add_argument("--seeds", type=_seed_range, required=True, help="run seeds A-B (inclusive)")
    p.add_argument(
        "--kind",
        choices=("sim", "stress"),
        default="sim",
        help="sim seeds (default), or real-process `xpemu stress` seeds, one per worker",
    )
    p.add_argument("--scenario", choices=sorted(SCENARIOS), help="sim: world shape (default small)")
    p.add_argument("--ring-mode", choices=[m.value for m in RingMode], help="hv's ring mode")
    p.add_argument("--duration", type=positive_float, help="stress: seconds per run (default 30)")
    p.add_argument("--faults", type=nonneg_int, help="stress: faults per run (stress's default)")
    p.add_argument("--kinds", type=_kinds, help="stress: fault kinds and weights (stress's)")
    p.add_argument("--nr-gfns", type=positive_int, help="stress: guest size in pages (2048)")
    p.add_argument(
        "--seed-timeout",
        type=positive_float,
        metavar="SECONDS",
        help="a seed with no verdict by then is a `timeout` row: sim, CPU seconds "
        "(default 10x the scenario's typical seed, at least 10); stress, wall seconds "
        "(default 2x --duration + 60)",
    )
    p.add_argument("--scheduler", help="an existing Dask scheduler, tcp://HOST:PORT")
    p.add_argument(
        "--workers", type=positive_int, help="local worker processes (default: one per core)"
    )
    p.add_argument("--block", type=positive_int, help="sim seeds per task (default: by range size)")
    p.add_argument("--run-dir", type=Path, help="where the default ledger goes (default: cwd)")
    p.add_argument(
        "--ledger", type=Path, help="the SQLite ledger (default RUN_DIR/campaign.sqlite)"
    )
    p.add_argument("--resume", action="store_true", help="skip seeds already in the ledger")
    p.add_argument(
        "--recheck",
        type=_share,
        default=0.05,
        help="sim: share of passing seeds run again on another worker (default 0.05)",
    )
    p.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=10.0,
        help="seconds to reach --scheduler",
    )
    p.add_argument("--json", type=Path, help="write the results here as JSON")


def campaign_options(args: argparse.Namespace) -> dict[str, Any]:
    """What every seed of this campaign runs under (the ledger's `options`); ValueError
    for options of the other kind. Sim options keep their old shape (older ledgers)."""
    stress_only = {"--duration": args.duration, "--faults": args.faults}
    stress_only |= {"--kinds": args.kinds, "--nr-gfns": args.nr_gfns}
    if args.kind == "sim":
        given = [flag for flag, value in stress_only.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only with --kind stress")
        return {"scenario": args.scenario or "small", "ring_mode": args.ring_mode}
    if args.scenario is not None:
        raise ValueError("--scenario is the sim's: not with --kind stress")
    if args.block is not None:
        raise ValueError("--block: a stress seed is one task of its own")
    return {
        "kind": "stress",
        "duration": args.duration or 30.0,
        "faults": args.faults,
        "kinds": args.kinds,
        "nr_gfns": args.nr_gfns,
        "ring_mode": args.ring_mode,
    }
