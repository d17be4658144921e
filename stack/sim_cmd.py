"""`xpemu sim`: the whole stack in one process under one seed (SIM.md, World 2).

`--seed N` runs one seed and prints its summary; `--seeds A-B [--jobs J]` runs a range
with live progress and ends with seeds per second, faults by kind, crash-point coverage
and every failing seed's replay command. `--trace FILE` writes the events of a run (JSON
lines), `--check-determinism` runs each seed twice and compares the trace hashes,
`--shrink` cuts a failing seed's plan down by delta debugging, `--schedule FILE` runs a
given plan (the output of `--shrink`, or a schedule `xpemu stress` printed or recorded).
Exit status: 0 passed, 1 a check failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from protocol import RingMode

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _seed_range(text: str) -> range:
    first, sep, last = text.partition("-")
    try:
        a, b = int(first), int(last if sep else first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed range A-B") from None
    if a < 0 or b < a:
        raise argparse.ArgumentTypeError(f"seed range {text!r} is empty or backwards")
    return range(a, b + 1)


def _nonneg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _jobs(text: str) -> int:
    value = _nonneg(text)
    if value < 1:
        raise argparse.ArgumentTypeError("--jobs must be >= 1")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `xpemu sim` options."""
    from sim import SCENARIOS

    which = p.add_mutually_exclusive_group()
    which.add_argument("--seed", type=_nonneg, help="run this one seed")
    which.add_argument("--seeds", type=_seed_range, help="run seeds A-B (inclusive)")
    p.add_argument("--jobs", type=_jobs, default=1, help="worker processes for --seeds (1)")
    p.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        help="world shape (small, or the one a --schedule file names)",
    )
    p.add_argument(
        "--ring-mode",
        choices=[m.value for m in RingMode],
        help="hv's ring mode (xen: a lost pager orphans the ring; the run reports the stall)",
    )
    p.add_argument("--trace", type=Path, help="write every event of the run here (JSON lines)")
    p.add_argument(
        "--check-determinism", action="store_true", help="run each seed twice; hashes must match"
    )
    p.add_argument("--shrink", action="store_true", help="shrink a failing seed's fault plan")
    p.add_argument("--schedule", type=Path, help="run this plan (sim JSON or xpemu stress's)")
    p.add_argument("--json", type=Path, help="write the results here as JSON")


def _say(text: str = "") -> None:
    print(text, flush=True)


def _fail(msg: str) -> int:
    print(f"xpemu sim: error: {msg}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def _replay(seed: int, scenario: str, ring_mode: str | None, plan_file: str | None = None) -> str:
    cmd = f"xpemu sim --seed {seed}"
    if scenario != "small":
        cmd += f" --scenario {scenario}"
    if ring_mode:
        cmd += f" --ring-mode {ring_mode}"
    if plan_file:
        cmd += f" --schedule {plan_file}"
    return cmd


def main(args: argparse.Namespace) -> int:
    """Run `xpemu sim`; the exit status."""
    from sim import SCENARIOS, PlanError, plan_from_json

    plan = None
    seed = args.seed
    scenario = args.scenario
    if args.schedule is not None:
        if args.seeds is not None:
            return _fail("--schedule runs one seed: give --seed (or none), not --seeds")
        try:
            text = args.schedule.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            return _fail(f"cannot read the schedule {args.schedule}: {exc}")
        try:
            doc = json.loads(text)
            named = doc.get("scenario") if isinstance(doc, dict) else None
        except ValueError:
            named = None
        if scenario is None and named in SCENARIOS:
            scenario = named
        try:
            plan, meta = plan_from_json(text, window=SCENARIOS[scenario or "small"].window)
        except PlanError as exc:
            return _fail(f"schedule {args.schedule}: {exc}")
        if seed is None:
            seed = meta.get("seed", 0) if isinstance(meta.get("seed", 0), int) else 0
    args.scenario = scenario or "small"
    if args.seeds is not None:
        if args.trace is not None:
            return _fail("--trace writes one run: use it with --seed")
        return _many(args)
    if args.jobs != 1:
        return _fail("--jobs applies to --seeds")
    return _single(args, 0 if seed is None else seed, plan)


def _single(args: argparse.Namespace, seed: int, plan: Any) -> int:
    from sim import run_seed, shrink

    result = run_seed(
        seed,
        scenario=args.scenario,
        plan=plan,
        keep_trace=args.trace is not None,
        ring_mode=args.ring_mode,
    )
    if args.trace is not None:
        try:
            with open(args.trace, "w") as lines:
                assert result.trace is not None
                result.trace.write(lines)
        except OSError as exc:
            return _fail(f"cannot write the trace to {args.trace}: {exc.strerror or exc}")
    _print_result(result)
    code = EXIT_OK if result.ok else EXIT_FAILED
    out: dict[str, Any] = {"run": result.to_dict()}
    if args.check_determinism:
        again = run_seed(seed, scenario=args.scenario, plan=plan, ring_mode=args.ring_mode)
        same = again.trace_hash == result.trace_hash
        _say(f"determinism: {'same' if same else 'DIFFERENT'} trace hash on a second run")
        out["deterministic"] = same
        if not same:
            code = EXIT_FAILED
    if not result.ok:
        _say(f"replay: {_replay(seed, args.scenario, args.ring_mode, plan and 'PLAN.json')}")
    if args.shrink and not result.ok:
        _say(f"shrinking {len(result.plan.faults)} faults ...")

        def failures(candidate: Any) -> list[str]:
            r = run_seed(seed, scenario=args.scenario, plan=candidate, ring_mode=args.ring_mode)
            return r.failures

        shrunk = shrink(result.plan, failures)
        _say(f"shrunk to {len(shrunk.plan.faults)} faults in {shrunk.runs} runs:")
        for f in shrunk.plan.faults:
            _say(f"  {f.describe()}")
        if shrunk.plan.toggles:
            _say(f"  toggles: {', '.join(sorted(shrunk.plan.toggles))}")
        for failure in shrunk.failures[:3]:
            _say(f"  fails: {failure}")
        _say("plan (save as PLAN.json):")
        _say(shrunk.plan.to_json(seed, args.scenario))
        _say(f"replay: {_replay(seed, args.scenario, args.ring_mode, 'PLAN.json')}")
        out["shrunk"] = shrunk.plan.to_dict(seed, args.scenario)
    return _write_json(args, out) or code


def _print_result(r: Any) -> None:
    verdict = "PASSED" if r.ok else "STUCK" if r.stuck else "STALLED" if r.stalled else "FAILED"
    fired = ", ".join(f"{k} {v}" for k, v in sorted(r.fired.items())) or "none"
    points = ", ".join(f"{k} {v}" for k, v in sorted(r.crash_points.items())) or "none"
    d = r.to_dict()
    _say(f"xpemu sim: seed {r.seed} ({r.scenario}): {verdict}")
    _say(f"  toggles: {', '.join(sorted(r.plan.toggles)) or 'none'}; faults fired: {fired}")
    _say(f"  crash points hit: {points}; pager lives {r.lives}")
    _say(
        f"  guest ops {d['guest_ops']}, page-outs {d['page_outs']}, page-ins {d['page_ins']}, "
        f"simulated {r.sim_time:.3f} s in {r.wall_s:.2f} s"
    )
    if r.lost:
        _say(f"  gfns lost (EIO to the guest): {r.lost}")
    _say(f"  trace: {r.trace_events} events, hash {r.trace_hash}")
    for failure in r.failures:
        _say(f"  FAIL {failure}")


def _many(args: argparse.Namespace) -> int:
    from sim import run_seeds
    from sim.runs import losses_line

    seeds = list(args.seeds)
    step = max(1, len(seeds) // 10)

    def progress(r: Any, s: Any) -> None:
        if not r.ok:
            _say(f"  seed {r.seed} FAILED: {r.failures[0]}")
        if s.seeds % step == 0 or s.seeds == len(seeds):
            rate = s.seeds / s.wall_s if s.wall_s else 0.0
            _say(f"  {s.seeds}/{len(seeds)} seeds, {len(s.failed)} failed, {rate:.1f} seeds/s")

    _say(f"xpemu sim: seeds {seeds[0]}-{seeds[-1]} ({args.scenario}), {args.jobs} job(s)")
    summary = run_seeds(
        seeds,
        scenario=args.scenario,
        jobs=args.jobs,
        check_determinism=args.check_determinism,
        ring_mode=args.ring_mode,
        progress=progress,
    )
    d = summary.to_dict()
    _say(
        f"{d['seeds']} seeds in {d['wall_s']:.1f} s ({d['seeds_per_s']:.2f} seeds/s): "
        f"{d['passed']} passed, {len(d['failed'])} failed"
    )
    _say("faults fired: " + (", ".join(f"{k} {v}" for k, v in d["fired"].items()) or "none"))
    covered = len(d["crash_points"]) - len(d["uncovered_crash_points"])
    _say(
        f"crash points reached: {covered}/{len(d['crash_points'])} "
        + ", ".join(f"{k} {v}" for k, v in d["crash_points"].items())
    )
    if d["uncovered_crash_points"]:
        _say(f"  never reached: {', '.join(d['uncovered_crash_points'])}")
    if line := losses_line(summary.lost):
        _say(f"{line}; a passing seed loses only to media faults")
    if args.check_determinism:
        bad = d["determinism_mismatches"]
        _say(f"determinism: {'every trace hash matched' if not bad else f'MISMATCH on {bad}'}")
    for item in d["failed"]:
        _say(f"  seed {item['seed']}: {item['failures'][0]}")
        _say(f"    replay: {_replay(item['seed'], args.scenario, args.ring_mode)}")
    code = EXIT_OK if summary.ok else EXIT_FAILED
    if args.shrink and summary.failed:
        seed = min(s for s, _ in summary.failed)
        _say(f"shrinking seed {seed}:")
        args.seed = seed
        _single(args, seed, None)
    return _write_json(args, {"summary": d}) or code


def _write_json(args: argparse.Namespace, doc: dict[str, Any]) -> int:
    if args.json is None:
        return 0
    try:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    except OSError as exc:
        return _fail(f"cannot write {args.json}: {exc.strerror or exc}")
    return 0


__all__ = ["add_arguments", "main"]
