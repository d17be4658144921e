"""`xpemu campaign`: many `xpemu sim` (or `xpemu stress`) seeds on Dask, each in a ledger.

Seeds go out in blocks (one Dask task per block, so the per-task overhead stays small
against a sim run) to a local cluster of worker processes, one per core, or to the
scheduler `--scheduler tcp://HOST:PORT` names. Each worker runs its block
(stack/campaign_child.py: each sim seed in a forked child under a CPU bound, so a hung
seed is a `timeout` row, not a hung campaign) and returns one result per seed; the client
writes each block to the SQLite ledger in one transaction as it arrives, so Ctrl-C leaves
whole blocks and `--resume` continues. A share of passing sim seeds (`--recheck`) runs
again on another worker; a different trace hash is lost determinism. `--kind stress` runs
one `xpemu stress` per task, at most one per worker at a time (the worker resource
`stress`), and checks no determinism. Exit status: 0 passed, 1 a seed failed (or lost
determinism), 2 bad input or no scheduler, 130 interrupted.
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
from pathlib import Path
from typing import Any

from .campaign_args import add_arguments, campaign_options
from .campaign_child import BLOCKED_S
from .campaign_dask import (
    STRESS_RESOURCE,
    _remote_client,
    local_client,
    local_cluster,
    version_note,
)
from .campaign_seeds import default_timeout, result, run_block

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


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
    from .campaign_report import report

    try:
        opts = campaign_options(args)
    except ValueError as exc:
        return _fail(str(exc))
    ledger_path = args.ledger or (args.run_dir or Path.cwd()) / "campaign.sqlite"
    options = json.dumps(opts, sort_keys=True)
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
            return report(args, ledger, opts)
        try:
            client, cluster = _connect(args)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        if client is None:
            return EXIT_USAGE
        try:
            code = _run(args, client, ledger, seeds, opts)
        finally:
            _quiet_close(client, cluster)
        if code in (EXIT_INTERRUPTED, EXIT_USAGE):
            return code
        return report(args, ledger, opts) or code
    finally:
        ledger.close()


def _connect(args: argparse.Namespace) -> tuple[Any, Any]:
    """A Dask client on `--scheduler` or a new local cluster; (None, None) after a message."""
    import dask

    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    dask.config.set({"distributed.comm.retry.count": 0})
    if args.scheduler:
        if args.workers is not None:
            _fail("--workers sizes a local cluster: not with --scheduler")
            return None, None
        try:
            return _remote_client(args.scheduler, args.connect_timeout), None
        except (OSError, TimeoutError, ValueError) as exc:
            _fail(f"cannot reach the scheduler {args.scheduler}: {exc or type(exc).__name__}")
            return None, None
    return local_client(args.workers or os.cpu_count() or 1)


def block_size(seeds: int, workers: int) -> int:
    """Sim seeds per task by default: about four tasks per worker, at most 10 seeds each."""
    return max(1, min(10, seeds // max(1, 4 * workers)))


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
        return [result(seed, "error", "", failure) for seed in block]


def _key(kind: str, seeds: list[int]) -> str:
    """A task key: Dask's own (uuid4) would not do, as the sim seeds `uuid.uuid4` while it
    runs, and with workers in this process (threads) two blocks could draw the same key."""
    return f"xpemu-{kind}-{seeds[0]}-{seeds[-1]}-{secrets.token_hex(8)}"


def _stress_workers(client: Any) -> list[str]:
    """Workers that offer the `stress` resource (so run at most one stress seed each)."""
    info = client.scheduler_info()["workers"]
    return [a for a, w in info.items() if w.get("resources", {}).get(STRESS_RESOURCE, 0) >= 1]


def _run(
    args: argparse.Namespace, client: Any, ledger: Any, seeds: list[int], opts: dict[str, Any]
) -> int:
    """Hand the blocks out, record results as they arrive, print progress on stderr."""
    from distributed import as_completed

    kind = opts.get("kind", "sim")
    timeout = args.seed_timeout or default_timeout(kind, opts)
    workers = list(client.scheduler_info()["workers"])
    submit: dict[str, Any] = {}
    if kind == "stress":
        if not _stress_workers(client):
            return _fail(
                f"no worker of {args.scheduler} offers the resource {STRESS_RESOURCE!r}: "
                f"start them with `dask worker ... --resources {STRESS_RESOURCE}=1`"
            )
        # Worker resources, not a semaphore: a Dask Semaphore bounds the whole cluster,
        # and a task waiting on a lease would hold a worker thread; a resource is counted
        # per worker and the scheduler places a seed only where one is free.
        submit["resources"] = {STRESS_RESOURCE: 1}
        size = 1
    else:
        size = args.block or block_size(len(seeds), len(workers))
    blocks = _blocks(seeds, size)
    where = args.scheduler or f"local cluster of {len(workers)} worker(s)"
    what = "stress" if kind == "stress" else opts["scenario"]
    _say(
        f"xpemu campaign: {len(seeds)} seeds ({what}) in {len(blocks)} blocks on {where}; "
        f"seed timeout {timeout:g} {'wall' if kind == 'stress' else 'CPU'} s"
    )
    futures = [
        client.submit(run_block, kind, b, opts, timeout, key=_key("block", b), **submit)
        for b in blocks
    ]
    kinds = {f.key: ("run", b) for f, b in zip(futures, blocks, strict=True)}
    pending = as_completed(futures)
    done = failed = 0
    t0 = time.perf_counter()
    last = 0.0
    try:
        for fut in pending:
            row_kind, block = kinds.pop(fut.key)
            results = _results(fut, block)
            ledger.record(results, row_kind)
            if row_kind != "run":
                continue
            done += len(results)
            failed += sum(r["verdict"] != "passed" for r in results)
            for r in results:
                if r.get("blocked") and r["verdict"] != "timeout":
                    print(
                        f"  seed {r['seed']}: its child slept {BLOCKED_S:g} s holding it (a "
                        f"lock held at the fork?) and was replaced; its stack: {r['blocked']}",
                        file=sys.stderr,
                        flush=True,
                    )
            for r in results:
                if kind != "sim" or r["verdict"] != "passed":
                    continue  # stress is not deterministic: nothing to re-check
                if _rechecked(r["seed"], args.recheck):
                    if len(workers) < 2:  # at the start, the workers may not all have joined
                        workers = list(client.scheduler_info()["workers"])
                    others = [w for w in workers if w != r["worker"]] or workers
                    again = client.submit(
                        run_block,
                        kind,
                        [r["seed"]],
                        opts,
                        timeout,
                        key=_key("recheck", [r["seed"]]),
                        workers=others or None,
                        allow_other_workers=bool(others),  # Dask: only with workers=
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


__all__ = [
    "add_arguments",
    "block_size",
    "campaign_options",
    "local_client",
    "local_cluster",
    "main",
    "run_block",
    "version_note",
]
