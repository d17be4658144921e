"""The end of `xpemu campaign`: one table (and `--json`) over the ledger's rows for a range.

Verdicts, faults fired by kind, crash-point coverage, determinism (sim only), gfns lost,
the slowest seeds, and each failing seed's replay and shrink commands. Returns the exit status.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import Counter
from typing import Any

from .campaign_seeds import stress_argv
from .sim_cmd import _replay

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _say(text: str = "") -> None:
    print(text, flush=True)


def replay_commands(options: dict[str, Any], row: dict[str, Any]) -> tuple[str, str]:
    """A failing seed's replay and shrink command lines."""
    seed = row["seed"]
    if options.get("kind") == "stress":
        replay = shlex.join(["xpemu", "stress", "--seed", str(seed), *stress_argv(options)])
        # A stress failure shrinks in the sim, from the schedule its report recorded
        # (the run dir is kept on the worker that ran it: the failure names it).
        where = (row["failure"] or "").rpartition("; run dir ")[2].partition(":")[2]
        report = f"{where}/report.json" if where else "RUN_DIR/report.json"
        return replay, shlex.join(["xpemu", "sim", "--schedule", report, "--shrink"])
    replay = _replay(seed, options["scenario"], options["ring_mode"])
    return replay, f"{replay} --shrink"


def report(args: argparse.Namespace, ledger: Any, options: dict[str, Any]) -> int:
    """The end table over the ledger's rows for this range; the exit status."""
    stress = options.get("kind") == "stress"
    wanted = set(args.seeds)
    runs = [r for r in ledger.rows("run") if r["seed"] in wanted and r["options"] == ledger.options]
    rechecks = {
        r["seed"]: r
        for r in ledger.rows("recheck")
        if r["seed"] in wanted and r["options"] == ledger.options
    }
    verdicts = Counter(r["verdict"] for r in runs)
    faults: Counter[str] = Counter()
    points: Counter[str] = Counter()
    for r in runs:
        faults.update(json.loads(r["faults"]))
        points.update(json.loads(r["crash_points"]))
    by_seed = {r["seed"]: r for r in runs}
    lost = sorted(
        s
        for s, again in rechecks.items()
        if s in by_seed and by_seed[s]["trace_hash"] != again["trace_hash"]
    )
    failing = [r for r in runs if r["verdict"] != "passed"]
    losing = [(r["seed"], r["lost_gfns"]) for r in runs if r.get("lost_gfns")]
    from pager.faults import CRASH_POINTS
    from sim.runs import losses_line

    _say(f"{len(runs)} seeds in the ledger {ledger.path}")
    _say("verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())))
    _say("faults fired: " + (", ".join(f"{k} {v}" for k, v in sorted(faults.items())) or "none"))
    covered = sum(1 for p in CRASH_POINTS if points[p])
    _say(
        f"crash points reached: {covered}/{len(CRASH_POINTS)} "
        + ", ".join(f"{p} {points[p]}" for p in CRASH_POINTS)
    )
    if stress:
        _say(
            "determinism: not checked (stress runs real processes, not deterministic; the "
            "ledger's trace_hash holds the hash of each seed's fault schedule)"
        )
    else:
        _say(
            f"determinism: {len(rechecks)} seeds re-run on another worker, "
            + (f"LOST on {lost}" if lost else "every trace hash matched")
        )
    if line := losses_line(losing):
        _say(line + ("" if stress else "; a passing seed loses only to media faults"))
    slowest = sorted(runs, key=lambda r: -r["duration_s"])[:5]
    _say("slowest: " + ", ".join(f"seed {r['seed']} {r['duration_s']:.2f} s" for r in slowest))
    for r in failing:
        replay, shrink = replay_commands(options, r)
        _say(f"  seed {r['seed']} {r['verdict'].upper()}: {r['failure']}")
        _say(f"    replay: {replay}")
        _say(f"    shrink: {shrink}")
    if args.json is not None:
        doc = {
            "kind": "stress" if stress else "sim",
            "seeds": len(runs),
            "verdicts": dict(verdicts),
            "faults": dict(sorted(faults.items())),
            "crash_points": {p: points[p] for p in CRASH_POINTS},
            "determinism_checked": not stress,
            "lost_determinism": lost,
            "rechecked": sorted(rechecks),
            "lost_gfns": sum(n for _, n in losing),
            "seeds_with_losses": len(losing),
            "slowest": [{"seed": r["seed"], "duration_s": r["duration_s"]} for r in slowest],
            "failing": [
                {
                    "seed": r["seed"],
                    "verdict": r["verdict"],
                    "failure": r["failure"],
                    "replay": replay_commands(options, r)[0],
                }
                for r in failing
            ],
        }
        try:
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
        except OSError as exc:
            print(
                f"xpemu campaign: error: cannot write {args.json}: {exc.strerror or exc}",
                file=sys.stderr,
                flush=True,
            )
            return EXIT_USAGE
    return EXIT_FAILED if failing or lost else EXIT_OK


__all__ = ["replay_commands", "report"]
