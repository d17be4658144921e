"""`xpemu campaign --kind stress`: real-process `xpemu stress` seeds, one per worker."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import LocalCluster

from stack.campaign_report import replay_commands
from stack.cli import main

STRESS = ["--duration", "10", "--faults", "2"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _schedule_hash(seed: int) -> str:
    """The hash of the schedule `xpemu stress` draws for this seed and options."""
    cmd = [sys.executable, "-m", "stack", "stress", "--seed", str(seed), *STRESS]
    out = subprocess.run([*cmd, "--schedule-only"], capture_output=True, check=True, timeout=60)
    schedule = json.dumps(json.loads(out.stdout)["schedule"], sort_keys=True).encode()
    return "schedule:" + hashlib.sha256(schedule).hexdigest()[:32]


@pytest.mark.timeout(300)
def test_a_stress_campaign_runs_one_seed_per_worker_and_fills_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["campaign", "--kind", "stress", "--seeds", "1-2", *STRESS, "--workers", "2"]
    argv += ["--run-dir", str(tmp_path), "--recheck", "1", "--json", str(tmp_path / "c.json")]
    code, out, err = _run(argv, capsys)
    with sqlite3.connect(tmp_path / "campaign.sqlite") as db:
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY seed")]
    assert [(r["seed"], r["kind"]) for r in rows] == [(1, "run"), (2, "run")]  # no recheck
    assert code == (0 if all(r["verdict"] == "passed" for r in rows) else 1), out + err
    assert {r["verdict"] for r in rows} <= {"passed", "failed"}, out + err
    # One stress seed per worker at a time: two seeds on two workers, one each.
    assert len({r["worker"] for r in rows}) == 2
    for r in rows:
        assert json.loads(r["options"]) == {
            "duration": 10.0,
            "faults": 2,
            "kind": "stress",
            "kinds": None,
            "nr_gfns": None,
            "ring_mode": None,
        }
        assert 0 < sum(json.loads(r["faults"]).values()) <= 2  # faults fired, by kind
        assert r["trace_hash"] == _schedule_hash(r["seed"])  # what stands in for it
        assert r["duration_s"] > 0
    assert "determinism: not checked (stress runs real processes" in out
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["kind"] == "stress" and doc["determinism_checked"] is False
    assert doc["seeds"] == 2 and doc["rechecked"] == []


def test_a_stress_seed_replays_as_xpemu_stress_and_shrinks_in_the_sim() -> None:
    options = {"kind": "stress", "duration": 10.0, "faults": 2, "kinds": "kill=1"}
    row = {"seed": 7, "failure": "lost gfns 3; run dir host:/tmp/xpemu-campaign-stress-7-x"}
    replay, shrink = replay_commands(options, row)
    assert replay == "xpemu stress --seed 7 --duration 10 --faults 2 --kinds kill=1"
    assert shrink == "xpemu sim --schedule /tmp/xpemu-campaign-stress-7-x/report.json --shrink"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--kind", "stress", "--scenario", "tiny"], "--scenario is the sim's"),
        (["--duration", "10"], "--duration: only with --kind stress"),
        (["--kind", "stress", "--block", "3"], "a stress seed is one task"),
        (["--kind", "stress", "--kinds", "boom=1"], "boom"),
    ],
)
def test_options_of_the_other_kind_are_one_line_and_exit_2(
    extra: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(["campaign", "--seeds", "1-2", "--run-dir", str(tmp_path), *extra], capsys)
    assert code == 2
    assert err.count("\n") == 1 and needle in err, err


@pytest.fixture
def cluster_without_stress() -> Iterator[str]:
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    ) as cluster:
        yield cluster.scheduler_address


@pytest.mark.timeout(120)
def test_a_scheduler_without_stress_workers_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cluster_without_stress: str
) -> None:
    argv = ["campaign", "--kind", "stress", "--seeds", "1-2", "--scheduler"]
    argv += [cluster_without_stress, "--ledger", str(tmp_path / "l.sqlite")]
    code, out, err = _run(argv, capsys)
    assert code == 2, out + err
    assert err.count("\n") == 1 and "--resources stress=1" in err, err


def _processes_naming(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (their run dir)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if text in args:
            found.append(args)
    return found


@pytest.mark.timeout(300)
def test_a_stress_seed_past_its_timeout_is_a_timeout_row_and_leaves_no_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["campaign", "--kind", "stress", "--seeds", "3", *STRESS, "--workers", "1"]
    argv += ["--seed-timeout", "4", "--run-dir", str(tmp_path)]
    code, out, err = _run(argv, capsys)
    assert code == 1, out + err
    with sqlite3.connect(tmp_path / "campaign.sqlite") as db:
        [(verdict, failure)] = db.execute("SELECT verdict, failure FROM runs").fetchall()
    assert verdict == "timeout", failure
    assert failure.startswith("no verdict within 4 wall seconds: xpemu stress stopped")
    run_dir = failure.rpartition("; run dir ")[2].partition(":")[2]
    assert Path(run_dir, "output.txt").exists()  # kept, and named
    assert _processes_naming(run_dir) == []  # hv, pager, guest stopped with it
    assert "replay: xpemu stress --seed 3 --duration 10 --faults 2\n" in out
    shutil.rmtree(run_dir)
