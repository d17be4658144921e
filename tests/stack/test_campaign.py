"""`xpemu campaign`: seeds on Dask fill the ledger; resume, a planted bug, bad input."""

from __future__ import annotations

import functools
import importlib.util
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from distributed import LocalCluster

from stack.cli import main


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _run_planted(
    plant: Callable[..., Any],
    seeds: str,
    more: list[str],
    cluster: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> tuple[int, str, str]:
    """`xpemu campaign` of `seeds` (tiny) on the in-process `cluster` with `sim.run_seed`
    planted: `plant(real_run_seed, seed, **kw)` runs instead."""
    import sim

    monkeypatch.setattr(sim, "run_seed", functools.partial(plant, sim.run_seed))
    argv = ["campaign", "--seeds", seeds, "--scenario", "tiny", "--scheduler", cluster]
    return _run([*argv, *more], capsys)


def _rows(ledger: Path, kind: str = "run") -> list[tuple[int, str, str]]:
    with sqlite3.connect(ledger) as db:
        return db.execute(
            "SELECT seed, verdict, worker FROM runs WHERE kind = ? ORDER BY seed", (kind,)
        ).fetchall()


def _planted() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "sim" / "planted.py"
    spec = importlib.util.spec_from_file_location("campaign_planted", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def threads_cluster() -> Iterator[str]:
    """A Dask worker in this process, so a monkeypatched pager reaches it.

    One worker thread: planted bugs keep state across calls, and two sims in threads of
    one process would share it.
    """
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    ) as cluster:
        yield cluster.scheduler_address


@pytest.mark.timeout(180)
def test_local_campaign_fills_the_ledger_and_resume_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["campaign", "--seeds", "1-20", "--scenario", "tiny", "--workers", "2"]
    argv += ["--run-dir", str(tmp_path), "--recheck", "0.2", "--json", str(tmp_path / "c.json")]
    code, out, err = _run(argv, capsys)
    assert code == 0, out + err
    rows = _rows(tmp_path / "campaign.sqlite")
    assert [seed for seed, _, _ in rows] == list(range(1, 21))
    assert {verdict for _, verdict, _ in rows} == {"passed"}
    assert len({worker for _, _, worker in rows}) == 2  # both workers ran blocks
    rechecked = _rows(tmp_path / "campaign.sqlite", "recheck")
    assert rechecked, "a 20% share of 20 passing seeds is re-run"
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["seeds"] == 20 and doc["lost_determinism"] == [] and doc["failing"] == []
    assert doc["rechecked"] == [seed for seed, _, _ in rechecked]
    assert "20/20 seeds, 0 failing" in err
    assert "every trace hash matched" in out
    code, out, err = _run([*argv, "--resume"], capsys)
    assert code == 0, out + err
    assert "20 seeds already run" in out and " 0 seeds (tiny) in 0 blocks" not in out
    assert len(_rows(tmp_path / "campaign.sqlite")) == 20


@pytest.mark.timeout(180)
def test_gfns_lost_to_media_faults_are_in_the_ledger_and_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], threads_cluster: str
) -> None:
    # Tiny seed 89 passes with one gfn lost to latent sectors (tests/sim/test_sim_cli.py).
    argv = ["campaign", "--seeds", "88-90", "--scenario", "tiny", "--scheduler", threads_cluster]
    argv += ["--run-dir", str(tmp_path), "--json", str(tmp_path / "c.json")]
    code, out, err = _run(argv, capsys)
    assert code == 0, out + err
    assert "gfns lost (EIO to the guest): 1 in 1 seeds, at most 1 (seed 89)" in out
    doc = json.loads((tmp_path / "c.json").read_text())
    assert (doc["lost_gfns"], doc["seeds_with_losses"]) == (1, 1)
    with sqlite3.connect(tmp_path / "campaign.sqlite") as db:
        rows = db.execute("SELECT seed, lost_gfns FROM runs WHERE kind = 'run' ORDER BY seed")
        assert rows.fetchall() == [(88, 0), (89, 1), (90, 0)]


@pytest.mark.timeout(180)
def test_resume_runs_only_the_missing_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], threads_cluster: str
) -> None:
    base = ["campaign", "--scenario", "tiny", "--scheduler", threads_cluster, "--recheck", "0"]
    base += ["--ledger", str(tmp_path / "l.sqlite")]
    code, out, err = _run([*base, "--seeds", "1-5"], capsys)
    assert code == 0, out + err
    code, out, err = _run([*base, "--seeds", "1-8", "--resume"], capsys)
    assert code == 0, out + err
    assert "5 seeds already run" in out and "3 seeds (tiny)" in out
    assert [seed for seed, _, _ in _rows(tmp_path / "l.sqlite")] == list(range(1, 9))


@pytest.mark.timeout(180)
def test_a_planted_bug_fails_the_campaign_with_replay_commands(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    threads_cluster: str,
) -> None:
    _planted().PLANTED["evict_before_durable"](monkeypatch)
    import sim

    expected = [s for s in range(1, 11) if not sim.run_seed(s, scenario="tiny").ok]
    assert expected, "the planted bug must fail some of the first ten tiny seeds"
    argv = ["campaign", "--seeds", "1-10", "--scenario", "tiny", "--scheduler", threads_cluster]
    argv += ["--ledger", str(tmp_path / "l.sqlite"), "--block", "3"]
    code, out, err = _run(argv, capsys)
    assert code == 1, out + err
    failing = [seed for seed, verdict, _ in _rows(tmp_path / "l.sqlite") if verdict != "passed"]
    assert failing == expected  # as run_seed finds them with the bug planted
    for seed in failing:
        assert f"replay: xpemu sim --seed {seed} --scenario tiny\n" in out
        assert f"shrink: xpemu sim --seed {seed} --scenario tiny --shrink\n" in out
    assert len(_rows(tmp_path / "l.sqlite")) == 10


@pytest.mark.timeout(60)
def test_unreachable_scheduler_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["campaign", "--seeds", "1-3", "--scheduler", "tcp://127.0.0.1:1"]
    argv += ["--connect-timeout", "1", "--run-dir", str(tmp_path)]
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and "cannot reach the scheduler" in err, err


@pytest.mark.parametrize(
    ("seeds", "needle"), [("9-3", "backwards"), ("x", "not a seed range"), ("-4", "seed range")]
)
def test_bad_seed_range_is_one_line_and_exit_2(
    seeds: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(["campaign", f"--seeds={seeds}"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and needle in err, err


def _wait_for(what: str, ready: Callable[[], bool], procs: list[subprocess.Popen[bytes]]) -> None:
    """Poll `ready` until true; fail at once if a process we depend on died."""
    deadline = time.monotonic() + 60
    while not ready():
        for p in procs:
            assert p.poll() is None, f"{p.args} exited {p.returncode} while waiting for {what}"
        assert time.monotonic() < deadline, f"no {what} in 60 s"
        time.sleep(0.05)  # polling a file another process writes; not synchronisation by time


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _count(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    try:
        return len(_rows(ledger))
    except sqlite3.OperationalError:  # the table is being created
        return 0


def _address(sched_file: Path) -> str | None:
    try:
        return str(json.loads(sched_file.read_text())["address"])
    except (OSError, ValueError, KeyError):  # not written yet, or half written
        return None


@pytest.mark.timeout(240)
def test_loopback_deployment_loses_no_seed_when_a_worker_is_killed(tmp_path: Path) -> None:
    dask = str(Path(sys.executable).with_name("dask"))
    sched_file = tmp_path / "scheduler.json"
    ledger = tmp_path / "l.sqlite"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    cmd = [dask, "scheduler", "--host=127.0.0.1", "--port=0", "--no-dashboard"]
    cmd += ["--dashboard-address=127.0.0.1:0"]
    scheduler = subprocess.Popen(
        [*cmd, f"--scheduler-file={sched_file}"],
        **quiet,  # type: ignore[call-overload]
    )
    procs = [scheduler]
    try:
        _wait_for("scheduler file", lambda: _address(sched_file) is not None, procs)
        address = _address(sched_file)
        assert address is not None
        cmd = [dask, "worker", address, "--no-nanny", "--nthreads=1", "--no-dashboard"]
        cmd += ["--dashboard-address=127.0.0.1:0"]
        workers = [
            subprocess.Popen([*cmd, "--host=127.0.0.1"], **quiet)  # type: ignore[call-overload]
            for _ in range(2)
        ]
        procs += workers
        cmd = [sys.executable, "-m", "stack", "campaign", "--seeds=1-40", "--scenario=tiny"]
        campaign = subprocess.Popen(
            [*cmd, "--block=2", f"--scheduler={address}", f"--ledger={ledger}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append(campaign)
        _wait_for("first ledger rows", lambda: _count(ledger) >= 4, procs[:-1])
        assert campaign.poll() is None, "the campaign ended before a worker could be killed"
        workers[0].send_signal(signal.SIGKILL)
        out, err = campaign.communicate(timeout=180)
        assert campaign.returncode == 0, (out + err).decode()
        rows = _rows(ledger)
        assert [seed for seed, _, _ in rows] == list(range(1, 41))  # each seed exactly once
        assert {verdict for _, verdict, _ in rows} == {"passed"}
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


@pytest.mark.timeout(240)
def test_ctrl_c_leaves_whole_blocks_that_resume_completes(tmp_path: Path) -> None:
    ledger = tmp_path / "l.sqlite"
    cmd = [sys.executable, "-m", "stack", "campaign", "--seeds=1-60", "--scenario=tiny"]
    cmd += ["--workers=2", "--block=3", "--recheck=0", f"--ledger={ledger}"]
    # SIGINT at its default in the child: a test run started in the background by a shell
    # without job control inherits it ignored, and Python then leaves it ignored (the
    # campaign ran on to the end, exit 0: the same test failed twice that way).
    campaign = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_sigint
    )
    try:
        _wait_for("first ledger rows", lambda: _count(ledger) >= 6, [campaign])
        campaign.send_signal(signal.SIGINT)
        out, err = campaign.communicate(timeout=120)
    finally:
        if campaign.poll() is None:
            campaign.kill()
            campaign.wait(timeout=30)
    assert campaign.returncode == 130, (out + err).decode()
    assert b"--resume continues" in err
    seeds = [seed for seed, _, _ in _rows(ledger)]
    assert 6 <= len(seeds) < 60
    assert all(seed % 3 == 1 and seed + 2 in seeds for seed in seeds[::3])  # whole blocks
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, timeout=180, check=False)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr).decode()
    assert f"{len(seeds)} seeds already run".encode() in resumed.stdout
    assert [seed for seed, _, _ in _rows(ledger)] == list(range(1, 61))


@pytest.mark.timeout(180)
def test_a_recheck_with_another_trace_hash_is_lost_determinism(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    threads_cluster: str,
) -> None:
    runs = tmp_path / "seed-2-runs"  # a file: each seed runs in a child forked per block

    def flaky(real: Callable[..., Any], seed: int, **kw: Any) -> Any:  # planted: seed 2's
        result = real(seed, **kw)  # second run differs
        if seed == 2:
            with runs.open("ab") as f:
                f.write(b".")
            if runs.stat().st_size > 1:
                result.trace_hash = "0" * 32
        return result

    monkeypatch.chdir(tmp_path)
    more = ["--ledger", "l.sqlite", "--recheck", "1", "--json", "j.json"]
    code, out, err = _run_planted(flaky, "1-3", more, threads_cluster, monkeypatch, capsys)
    assert code == 1, out + err
    assert "3 seeds re-run on another worker, LOST on [2]" in out
    assert json.loads((tmp_path / "j.json").read_text())["lost_determinism"] == [2]


@pytest.mark.timeout(180)
def test_a_child_blocked_by_a_lock_held_at_the_fork_is_replaced_and_its_seed_passes(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    threads_cluster: str,
) -> None:
    held = threading.Lock()
    held.acquire()  # held by this thread: in a forked child, by no one, for ever
    marker = tmp_path / "seed-2-blocked"  # a file: the children are forked per block

    def takes_the_lock(real: Callable[..., Any], seed: int, **kw: Any) -> Any:  # planted:
        if seed == 2 and not marker.exists():  # the fork hazard, once
            marker.touch()
            held.acquire()
        return real(seed, **kw)

    more = ["--ledger", str(tmp_path / "l.sqlite"), "--recheck", "0"]
    code, out, err = _run_planted(takes_the_lock, "1-3", more, threads_cluster, monkeypatch, capsys)
    assert code == 0, out + err
    assert marker.exists()  # the first child did block
    assert {verdict for _, verdict, _ in _rows(tmp_path / "l.sqlite")} == {"passed"}
    assert "seed 2: its child slept 5 s holding it" in err
    assert "in takes_the_lock" in err  # the blocked child's stack names where it waited


@pytest.mark.timeout(180)
def test_a_seed_whose_sim_raises_is_an_error_row_and_its_block_goes_on(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    threads_cluster: str,
) -> None:
    def broken(real: Callable[..., Any], seed: int, **kw: Any) -> Any:  # planted: the sim
        if seed == 5:  # itself crashes on seed 5
            raise RuntimeError("planted crash")
        return real(seed, **kw)

    more = ["--ledger", str(tmp_path / "l.sqlite"), "--block", "3", "--recheck", "0"]
    code, out, err = _run_planted(broken, "1-6", more, threads_cluster, monkeypatch, capsys)
    assert code == 1, out + err
    rows = _rows(tmp_path / "l.sqlite")
    assert [(seed, verdict) for seed, verdict, _ in rows] == [
        (1, "passed"),
        (2, "passed"),
        (3, "passed"),
        (4, "passed"),
        (5, "error"),
        (6, "passed"),
    ]
    assert "seed 5 ERROR: the sim raised RuntimeError: planted crash" in out


@pytest.mark.timeout(180)
def test_a_block_that_raises_records_its_seeds_as_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    threads_cluster: str,
) -> None:
    from stack import campaign_child

    real = campaign_child.SimChild.run

    def broken(self: Any, seed: int, worker: str) -> Any:  # planted: the task itself breaks
        if seed == 5:
            raise RuntimeError("planted crash")
        return real(self, seed, worker)

    monkeypatch.setattr(campaign_child.SimChild, "run", broken)
    argv = ["campaign", "--seeds", "1-6", "--scenario", "tiny", "--scheduler", threads_cluster]
    argv += ["--ledger", str(tmp_path / "l.sqlite"), "--block", "3", "--recheck", "0"]
    code, out, err = _run(argv, capsys)
    assert code == 1, out + err
    rows = _rows(tmp_path / "l.sqlite")
    assert [verdict for _, verdict, _ in rows] == ["passed"] * 3 + ["error"] * 3
    assert "seed 5 ERROR: the task raised RuntimeError: planted crash" in out


def test_a_ledger_from_before_cpu_seconds_gains_the_columns_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    from stack.campaign_child import result
    from stack.campaign_ledger import Ledger

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the schema of the first round (no cpu_s)
        db.execute(
            "CREATE TABLE runs (seed INTEGER NOT NULL, kind TEXT NOT NULL, options TEXT NOT "
            "NULL, version TEXT NOT NULL, git_commit TEXT, verdict TEXT NOT NULL, duration_s "
            "REAL NOT NULL, faults TEXT NOT NULL, crash_points TEXT NOT NULL, trace_hash TEXT "
            "NOT NULL, worker TEXT NOT NULL, failure TEXT, recorded_at REAL NOT NULL, "
            "UNIQUE (seed, kind, options))"
        )
        db.execute(
            "INSERT INTO runs VALUES (1,'run','{}','v',NULL,'passed',0.1,'{}','{}','h','w',NULL,0)"
        )
    ledger = Ledger(path, version="v", commit=None, options="{}")
    try:
        row = result(2, "passed", "w") | {"cpu_s": 0.25, "lost_gfns": 3}
        ledger.record([row])
        assert ledger.done_seeds() == {1, 2}
        assert [(r["seed"], r["cpu_s"], r["lost_gfns"]) for r in ledger.rows("run")] == [
            (1, None, None),
            (2, 0.25, 3),
        ]
    finally:
        ledger.close()
