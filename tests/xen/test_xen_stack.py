"""`xpemu up|stress --pager xenpaging`: the real binary in the stack, and what a kill costs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stack import xenpaging
from stack.cli import main

pytestmark = pytest.mark.timeout(240)


def _need_build() -> None:
    why = xenpaging.missing()
    if why is not None:
        pytest.skip(why)


def _xpemu(tmp_path: Path, *args: str) -> tuple[int, dict, str]:
    report = tmp_path / "report.json"
    run_dir = str(tmp_path / "run")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stack",
            *args,
            "--no-live",
            "--run-dir",
            run_dir,
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=220,
    )
    data = json.loads(report.read_text()) if report.exists() else {}
    return proc.returncode, data, proc.stdout + proc.stderr


def test_missing_binary_is_one_line_naming_make_xenpaging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(xenpaging, "BINARY", tmp_path / "no-such-xenpaging")
    assert main(["up", "--pager", "xenpaging", "--duration", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "make xenpaging" in err and "Traceback" not in err


def test_missing_shim_is_one_line_naming_make_xenpaging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "xenpaging"
    binary.write_bytes(b"")
    monkeypatch.setattr(xenpaging, "BINARY", binary)
    monkeypatch.setattr(xenpaging, "SHIM_DIR", tmp_path / "no-shim")
    assert main(["stress", "--pager", "xenpaging", "--duration", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "xenshim" in err and "make xenpaging" in err


def test_policy_is_not_xenpagings(capsys: pytest.CaptureFixture[str]) -> None:
    _need_build()
    assert main(["up", "--pager", "xenpaging", "--policy", "clock", "--duration", "5"]) == 2
    assert "xenpaging has its own" in capsys.readouterr().err


def test_up_with_xenpaging_passes(tmp_path: Path) -> None:
    _need_build()
    rc, report, out = _xpemu(tmp_path, "up", "--pager", "xenpaging", "--duration", "12")
    assert rc == 0, out
    assert report["config"]["pager"] == "xenpaging" and report["config"]["ring_size"] == 8
    assert report["pages"]["out"] > 1000 and report["guest"]["ops"] > 0
    assert report["final_verify"]["verified"] == 4096
    assert report["final_verify"]["integrity_errors"] == 0


def test_stress_kill_restart_reports_lost_gfns_and_exits_1(tmp_path: Path) -> None:
    """Reattach mode: the restarted xenpaging truncated its paging file."""
    _need_build()
    rc, report, out = _xpemu(
        tmp_path, "stress", "--pager", "xenpaging", "--kinds", "kill=1", "--faults", "1",
        "--seed", "3", "--duration", "14", "--nr-gfns", "1024", "--stuck-after", "3",
    )  # fmt: skip
    assert rc == 1, out
    assert report["pager"]["kills"] == 1 and report["pager"]["attaches"] >= 2
    assert report["lost_gfns"] > 0
    assert any("gfns lost" in v for v in report["violations"]), report["violations"]
    assert report["integrity_errors"] == 0  # lost, never wrong bytes


def test_stress_kill_in_xen_ring_mode_orphans_and_exits_1(tmp_path: Path) -> None:
    """Xen mode: the new xenpaging is refused (EBUSY) and vCPUs on paged gfns stay paused."""
    _need_build()
    rc, report, out = _xpemu(
        tmp_path, "stress", "--pager", "xenpaging", "--kinds", "kill=1", "--faults", "1",
        "--seed", "3", "--duration", "14", "--nr-gfns", "1024", "--stuck-after", "3",
        "--ring-mode", "xen",
    )  # fmt: skip
    assert rc == 1, out
    assert report["ring_orphaned"] is True
    assert report["pager"]["never_attached"] >= 1
    assert report["final_status"]["paged_pages"] > 0
    assert report["stuck_vcpus"], report["guest"]
