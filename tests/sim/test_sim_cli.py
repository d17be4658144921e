"""`xpemu sim` on the command line: results, replay of files, and bad input in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from planted import PLANTED

from stack.cli import main


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["sim", "--seeds", "9-3"], "backwards"),
        (["sim", "--seeds", "x"], "not a seed range"),
        (["sim", "--seed", "-1"], "negative"),
        (["sim", "--seed", "1", "--schedule", "/nonexistent/plan.json"], "cannot read"),
        (["sim", "--seeds", "1-2", "--trace", "t.jsonl"], "--trace"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and needle in err, err


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ("{not json", "not JSON"),
        ('{"schedule": [{"at": 1.0, "kind": "meteor"}]}', "unknown fault kind 'meteor'"),
        (
            '{"format": "xpemu-sim-plan/1", "faults": [{"at": 0.1, "kind": "crash", '
            '"point": "nowhere", "nth": 1}]}',
            "unknown crash point",
        ),
        ("[]", "JSON object"),
    ],
)
def test_bad_schedule_files(
    doc: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "plan.json"
    path.write_text(doc)
    code, _, err = _run(["sim", "--schedule", str(path)], capsys)
    assert code == 2 and err.count("\n") == 1 and needle in err, err


def test_one_seed_with_trace_and_determinism(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.jsonl"
    code, out, _ = _run(
        ["sim", "--seed", "3", "--scenario", "tiny", "--trace", str(trace), "--check-determinism"],
        capsys,
    )
    assert code == 0, out
    assert "PASSED" in out and "same trace hash" in out
    lines = trace.read_text().splitlines()
    assert lines and all(json.loads(line)["e"] for line in lines)
    digest = out.split("hash ")[1].split()[0]
    code, out2, _ = _run(["sim", "--seed", "3", "--scenario", "tiny"], capsys)
    assert digest in out2  # replayed byte for byte from the seed


def test_a_recorded_stress_schedule_replays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(["stress", "--seed", "11", "--faults", "12", "--schedule-only"], capsys)
    assert code == 0
    path = tmp_path / "stress.json"
    path.write_text(out)
    code, out, _ = _run(["sim", "--schedule", str(path)], capsys)
    assert code == 0, out
    assert "seed 11" in out and "PASSED" in out


@pytest.mark.timeout(300)
def test_a_report_written_by_a_real_stress_run_replays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`xpemu stress --report` (real processes) records its fault schedule; `xpemu sim
    --schedule REPORT` runs that schedule here, every fault of it, under the report's seed."""
    report = tmp_path / "report.json"
    argv = ["stress", "--seed", "5", "--duration", "12", "--faults", "5", "--no-live"]
    argv += ["--run-dir", str(tmp_path / "run"), "--report", str(report)]
    done = subprocess.run(
        [sys.executable, "-m", "stack", *argv], capture_output=True, check=False, timeout=240
    )
    assert report.exists(), done.stderr.decode()[-2000:]
    recorded = json.loads(report.read_text())
    assert recorded["command"] == "stress" and len(recorded["schedule"]) == 5
    code, out, err = _run(
        ["sim", "--schedule", str(report), "--json", str(tmp_path / "s.json")], capsys
    )
    assert code == 0, out + err
    assert "seed 5 (small): PASSED" in out
    run = json.loads((tmp_path / "s.json").read_text())["run"]
    assert sum(run["fired"].values()) == 5
    assert [f["kind"] for f in run["plan"]["faults"]] == [
        f["kind"] for f in sorted(recorded["schedule"], key=lambda f: f["at"])
    ]


def test_a_seed_range_reports_coverage(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["sim", "--seeds", "0-5", "--scenario", "tiny"], capsys)
    assert code == 0, out
    assert "6 seeds in" in out and "crash points reached" in out and "faults fired" in out


def test_gfns_lost_to_media_faults_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Tiny seed 89 passes, its latent sectors having destroyed one gfn's copy (EIO to the
    # guest, never wrong bytes): an honest loss, still shown, for the seed and the range.
    code, out, _ = _run(["sim", "--seed", "89", "--scenario", "tiny"], capsys)
    assert code == 0 and "gfns lost (EIO to the guest): 1\n" in out, out
    doc = tmp_path / "range.json"
    code, out, _ = _run(
        ["sim", "--seeds", "88-90", "--scenario", "tiny", "--json", str(doc)], capsys
    )
    assert code == 0 and "gfns lost (EIO to the guest): 1 in 1 seeds, at most 1 (seed 89)" in out
    summary = json.loads(doc.read_text())["summary"]
    assert (summary["lost_gfns"], summary["seeds_with_losses"]) == (1, 1)
    assert summary["most_lost"] == [89, 1]
    code, out, _ = _run(["sim", "--seeds", "0-2", "--scenario", "tiny"], capsys)
    assert code == 0 and "gfns lost" not in out


def test_a_failing_seed_is_shrunk_and_the_shrunk_plan_replays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    PLANTED["free_before_prep"](monkeypatch)
    code, out, _ = _run(["sim", "--seeds", "0-10", "--shrink"], capsys)
    assert code == 1
    assert "FAILED" in out and "replay: xpemu sim --seed" in out and "shrunk to" in out
    plan = next(line for line in out.splitlines() if line.startswith('{"faults"'))
    doc = json.loads(plan)
    assert len(doc["faults"]) <= 3
    path = tmp_path / "PLAN.json"
    path.write_text(plan)
    code, out, _ = _run(["sim", "--seed", str(doc["seed"]), "--schedule", str(path)], capsys)
    assert code == 1 and "FAILED" in out
