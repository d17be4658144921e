"""`xpemu campaign`: many `xpemu sim` seeds on Dask, each run recorded in a ledger (issue 17).

Seeds go out in blocks (one Dask task per block, so the per-task overhead stays small
against a sim run) to a local cluster of worker processes, one per core, or to the
scheduler `--scheduler tcp://HOST:PORT` names. Each worker runs its block in-process and
returns one result per seed; the client writes each block to the SQLite ledger in one
transaction as it arrives, so Ctrl-C leaves whole blocks and `--resume` continues. A share
of passing seeds (`--recheck`) runs again on another worker; a different trace hash is
lost determinism. Exit status: 0 passed, 1 a seed failed (or lost determinism), 2 bad
input or no scheduler, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from .sim_cmd import _replay, _seed_range

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not >= 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not > 0")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `xpemu campaign` options."""
    from protocol import RingMode
    from sim import SCENARIOS

    p.add_argument("--seeds", type=_seed_range, required=True, help="run seeds A-B (inclusive)")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="small", help="world shape")
    p.add_argument("--ring-mode", choices=[m.value for m in RingMode], help="hv's ring mode")
    p.add_argument("--scheduler", help="an existing Dask scheduler, tcp://HOST:PORT")
    p.add_argument(
        "--workers", type=_positive, help="local worker processes (default: one per core)"
    )
    p.add_argument("--block", type=_positive, help="seeds per task (default: by range size)")
    p.add_argument("--run-dir", type=Path, help="where the default ledger goes (default: cwd)")
    p.add_argument(
        "--ledger", type=Path, help="the SQLite ledger (default RUN_DIR/campaign.sqlite)"
    )
    p.add_argument("--resume", action="store_true", help="skip seeds already in the ledger")
    p.add_argument(
        "--recheck",
        type=_share,
        default=0.05,
        help="share of passing seeds run again on another worker (default 0.05)",
    )
    p.add_argument(
        "--connect-timeout", type=_seconds, default=10.0, help="seconds to reach --scheduler"
    )
    p.add_argument("--json", type=Path, help="write the results here as JSON")


def run_block(seeds: list[int], scenario: str, ring_mode: str | None) -> list[dict[str, Any]]:
    """Run a block of seeds in this worker; one small, picklable result per seed."""
    from sim import run_seed

    try:
        from distributed import get_worker

        worker = get_worker().address
    except ValueError:  # not inside a Dask worker (called directly)
        worker = f"pid {os.getpid()}"
    out = []
    for seed in seeds:
        t0 = time.perf_counter()
        r = run_seed(seed, scenario=scenario, ring_mode=ring_mode)
        verdict = "passed" if r.ok else ("stalled" if r.stalled else "failed")
        out.append(
            {
                "seed": seed,
                "verdict": verdict,
                "duration_s": round(time.perf_counter() - t0, 4),
                "faults": dict(sorted(r.fired.items())),
                "crash_points": dict(sorted(r.crash_points.items())),
                "trace_hash": r.trace_hash,
                "worker": worker,
                "failures": list(r.failures),
            }
        )
    return out


def _rechecked(seed: int, share: float) -> bool:
    """Whether a passing seed is re-run: a fixed hash of the seed, so reruns agree."""
    return (zlib.crc32(seed.to_bytes(8, "little")) % 10_000) < share * 10_000


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xpemu")
    except PackageNotFoundError:
        return "unknown"


def _fail(msg: str) -> int:
    print(f"xpemu campaign: error: {msg}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def _say(text: str = "") -> None:
    print(text, flush=True)


def _blocks(seeds: list[int], size: int) -> list[list[int]]:
    return [seeds[i : i + size] for i in range(0, len(seeds), size)]


def main(args: argparse.Namespace) -> int:
    """Run `xpemu campaign`; the exit status."""
    from .campaign_ledger import Ledger, LedgerError

    ledger_path = args.ledger or (args.run_dir or Path.cwd()) / "campaign.sqlite"
    options = json.dumps({"scenario": args.scenario, "ring_mode": args.ring_mode}, sort_keys=True)
    try:
        if args.run_dir is not None:
            args.run_dir.mkdir(parents=True, exist_ok=True)
        ledger = Ledger(ledger_path, version=_version(), commit=_git_commit(), options=options)
    except (OSError, LedgerError) as exc:
        return _fail(str(exc))
    try:
        seeds = list(args.seeds)
        if args.resume:
            done = ledger.done_seeds()
            seeds = [s for s in seeds if s not in done]
            _say(f"xpemu campaign: resuming, {len(args.seeds) - len(seeds)} seeds already run")
        if not seeds:
            return _report(args, ledger)
        try:
            client, cluster = _connect(args)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        if client is None:
            return EXIT_USAGE
        try:
            code = _run(args, client, ledger, seeds)
        finally:
            _quiet_close(client, cluster)
        if code == EXIT_INTERRUPTED:
            return code
        return _report(args, ledger) or code
    finally:
        ledger.close()


def _connect(args: argparse.Namespace) -> tuple[Any, Any]:
    """A Dask client on `--scheduler` or a new local cluster; (None, None) after a message."""
    import dask
    from distributed import Client, LocalCluster

    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    dask.config.set({"distributed.comm.retry.count": 0})
    if args.scheduler:
        if args.workers is not None:
            _fail("--workers sizes a local cluster: not with --scheduler")
            return None, None
        try:
            return Client(args.scheduler, timeout=args.connect_timeout), None
        except (OSError, TimeoutError, ValueError) as exc:
            _fail(f"cannot reach the scheduler {args.scheduler}: {exc or type(exc).__name__}")
            return None, None
    n = args.workers or os.cpu_count() or 1
    # The local workers are new processes that read their log level from the environment:
    # a cancelled task's warning at Ctrl-C is not news for the user.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
        # No dashboard, but the scheduler still serves /health and /metrics: on a free
        # loopback port, not on 8787 (taken by another cluster it warns and moves).
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )
    return Client(cluster), cluster


def _quiet_close(client: Any, cluster: Any) -> None:
    client.close()
    if cluster is not None:
        cluster.close()


def _results(fut: Any, block: list[int]) -> list[dict[str, Any]]:
    """A finished task's results; a task that raised (or killed its workers, as Dask's
    KilledWorker says) counts each of its seeds as an error, recorded like a verdict."""
    try:
        return list(fut.result())
    except Exception as exc:
        failure = f"the task raised {type(exc).__name__}: {exc}"
        return [
            {
                "seed": seed,
                "verdict": "error",
                "duration_s": 0.0,
                "faults": {},
                "crash_points": {},
                "trace_hash": "",
                "worker": "",
                "failures": [failure],
            }
            for seed in block
        ]


def _key(kind: str, seeds: list[int]) -> str:
    """A task key: Dask's own (uuid4) would not do, as the sim seeds `uuid.uuid4` while it
    runs, and with workers in this process (threads) two blocks could draw the same key."""
    return f"xpemu-{kind}-{seeds[0]}-{seeds[-1]}-{secrets.token_hex(8)}"


def _run(args: argparse.Namespace, client: Any, ledger: Any, seeds: list[int]) -> int:
    """Hand the blocks out, record results as they arrive, print progress on stderr."""
    from distributed import as_completed

    workers = list(client.scheduler_info()["workers"])
    size = args.block or max(1, min(10, len(seeds) // max(1, 4 * len(workers))))
    blocks = _blocks(seeds, size)
    where = args.scheduler or f"local cluster of {len(workers)} worker(s)"
    _say(f"xpemu campaign: {len(seeds)} seeds ({args.scenario}) in {len(blocks)} blocks on {where}")
    futures = [
        client.submit(run_block, b, args.scenario, args.ring_mode, key=_key("block", b))
        for b in blocks
    ]
    kinds = {f.key: ("run", b) for f, b in zip(futures, blocks, strict=True)}
    pending = as_completed(futures)
    done = failed = 0
    t0 = time.perf_counter()
    last = 0.0
    try:
        for fut in pending:
            kind, block = kinds.pop(fut.key)
            results = _results(fut, block)
            ledger.record(results, kind)
            if kind != "run":
                continue
            done += len(results)
            failed += sum(r["verdict"] != "passed" for r in results)
            for r in results:
                if r["verdict"] == "passed" and _rechecked(r["seed"], args.recheck):
                    others = [w for w in workers if w != r["worker"]] or workers
                    again = client.submit(
                        run_block,
                        [r["seed"]],
                        args.scenario,
                        args.ring_mode,
                        key=_key("recheck", [r["seed"]]),
                        workers=others or None,
                        allow_other_workers=True,
                    )
                    kinds[again.key] = ("recheck", [r["seed"]])
                    pending.add(again)
            now = time.perf_counter()
            if now - last >= 1.0 or done == len(seeds):
                last = now
                rate = done / (now - t0) if now > t0 else 0.0
                print(
                    f"  {done}/{len(seeds)} seeds, {failed} failing, {rate:.1f} seeds/s",
                    file=sys.stderr,
                    flush=True,
                )
    except KeyboardInterrupt:
        client.cancel(list(pending.futures))
        print(
            f"xpemu campaign: interrupted after {done} seeds; every finished block is in "
            f"{ledger.path}; --resume continues",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_INTERRUPTED
    return EXIT_OK


def _report(args: argparse.Namespace, ledger: Any) -> int:
    """The end table over the ledger's rows for this range; the exit status."""
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
    lost = sorted(
        s
        for s, again in rechecks.items()
        if any(r["seed"] == s and r["trace_hash"] != again["trace_hash"] for r in runs)
    )
    failing = [r for r in runs if r["verdict"] != "passed"]
    from pager.faults import CRASH_POINTS

    _say(f"{len(runs)} seeds in the ledger {ledger.path}")
    _say("verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())))
    _say("faults fired: " + (", ".join(f"{k} {v}" for k, v in sorted(faults.items())) or "none"))
    covered = sum(1 for p in CRASH_POINTS if points[p])
    _say(
        f"crash points reached: {covered}/{len(CRASH_POINTS)} "
        + ", ".join(f"{p} {points[p]}" for p in CRASH_POINTS)
    )
    _say(
        f"determinism: {len(rechecks)} seeds re-run on another worker, "
        + (f"LOST on {lost}" if lost else "every trace hash matched")
    )
    slowest = sorted(runs, key=lambda r: -r["duration_s"])[:5]
    _say("slowest: " + ", ".join(f"seed {r['seed']} {r['duration_s']:.2f} s" for r in slowest))
    for r in failing:
        replay = _replay(r["seed"], args.scenario, args.ring_mode)
        _say(f"  seed {r['seed']} {r['verdict'].upper()}: {r['failure']}")
        _say(f"    replay: {replay}")
        _say(f"    shrink: {replay} --shrink")
    if args.json is not None:
        doc = {
            "seeds": len(runs),
            "verdicts": dict(verdicts),
            "faults": dict(sorted(faults.items())),
            "crash_points": {p: points[p] for p in CRASH_POINTS},
            "lost_determinism": lost,
            "rechecked": sorted(rechecks),
            "slowest": [{"seed": r["seed"], "duration_s": r["duration_s"]} for r in slowest],
            "failing": [
                {"seed": r["seed"], "verdict": r["verdict"], "failure": r["failure"]}
                for r in failing
            ],
        }
        try:
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
        except OSError as exc:
            return _fail(f"cannot write {args.json}: {exc.strerror or exc}")
    return EXIT_FAILED if failing or lost else EXIT_OK


__all__ = ["add_arguments", "main", "run_block"]
