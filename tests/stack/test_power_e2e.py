"""`xpemu stress --kinds power,lie` end to end: real processes over a real FUSE mount.

The pager survives power cuts with nothing lost; a disk that lies makes the same check
fail (the proof that it can); nothing stays mounted or running afterwards. Skipped, with
the reason, where FUSE is not usable (the refusal itself is tested everywhere).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
from stack_helpers import PY, XPEMU, one_line_error, processes_mentioning, run_xpemu

from stack.power import fuse_problem, mount_points

needs_fuse = pytest.mark.skipif(fuse_problem() is not None, reason=str(fuse_problem()))


def _nothing_left(run_dir: Path) -> None:
    """No process, no mount, and the store back at state/ (no state.disk)."""
    assert processes_mentioning(str(run_dir)) == []
    assert not [m for m in mount_points() if m.startswith(str(run_dir))]
    assert (run_dir / "state").is_dir() and not (run_dir / "state.disk").exists()


async def _stress(tmp_path: Path, args: list[str], bound: float) -> tuple[int, str, Any]:
    run_dir, report = tmp_path / "run", tmp_path / "report.json"
    common = ["stress", "--run-dir", str(run_dir), "--report", str(report), "--no-live"]
    result = await run_xpemu([*common, *args], bound=bound)
    out = result.stdout.decode() + result.stderr.decode()
    assert "Traceback" not in out, out
    _nothing_left(run_dir)
    return result.returncode, out, json.loads(report.read_text())


def _no_loss(rc: int, out: str, report: dict[str, Any], cuts: int) -> None:
    assert rc == 0, out
    assert report["power"]["power_faults"] == cuts, report["faults_log"]
    assert report["integrity_errors"] == 0 and report["lost_gfns"] == 0
    assert not report["stuck_vcpus"]
    assert report["final_verify"]["integrity_errors"] == 0
    assert report["pages"]["out"] > 0
    assert "power cuts" in out


@needs_fuse
async def test_three_power_cuts_lose_nothing(tmp_path: Path) -> None:
    # Seed 2: one harsh cut (a subset of the unsynced writes kept), two gentle ones. Any
    # pager: the cut needs nothing but its state directory (here named by --pager-cmd).
    args = ["--seed", "2", "--duration", "24", "--faults", "3", "--kinds", "power=1"]
    args += ["--pager-cmd", f"{PY} -m pager"]
    rc, out, report = await _stress(tmp_path, args, bound=110)
    _no_loss(rc, out, report, cuts=3)
    assert report["power"]["harsh"] == 1
    # The cuts are aimed: each waits for a pager write and falls while it is in flight.
    # At random instants they seldom found one (0 unsynced writes in 31 of 31 cuts), as
    # the store's only unsynced window is between a phase's write and its sync.
    assert report["power"]["aimed"] >= 2
    assert report["power"]["unsynced_writes"] >= report["power"]["aimed"]
    assert report["power"]["unsynced_writes"] >= report["power"]["writes_lost"]


@pytest.mark.slow
@needs_fuse
async def test_twelve_power_cuts_half_of_them_harsh_lose_nothing(tmp_path: Path) -> None:
    args = ["--seed", "10", "--duration", "60", "--faults", "12", "--kinds", "power=1"]
    rc, out, report = await _stress(tmp_path, args, bound=240)
    _no_loss(rc, out, report, cuts=12)
    assert report["power"]["harsh"] == 6


@needs_fuse
async def test_a_lying_disk_loses_pages_and_the_run_fails(tmp_path: Path) -> None:
    """The power check can fail: syncs that lie, then a cut, lose evicted pages; the run
    reports which and exits 1. (Seed 3: each cut falls within a lie.)"""
    args = ["--seed", "3", "--duration", "24", "--faults", "4", "--kinds", "lie=1,power=1"]
    rc, out, report = await _stress(tmp_path, args, bound=110)
    assert rc == 1, out
    assert "FAILED" in out and "lost gfns (" in out
    assert report["lost_gfns"] > 0 and report["power"]["lied_syncs"] > 0
    assert report["power"]["writes_lost"] > 0


async def test_power_faults_without_fuse_are_refused_in_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = dict(os.environ, PATH=str(tmp_path))  # no fusermount3 on it
    with trio.fail_after(30):
        result = await trio.run_process(
            [*XPEMU, "stress", "--kinds", "kill=1,power=1", "--run-dir", str(run_dir)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    assert result.returncode == 2
    assert "power faults need FUSE" in one_line_error(result)
    assert not run_dir.exists()  # refused before anything started


@needs_fuse
async def test_a_failed_start_leaves_no_mount(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["stress", "--run-dir", str(run_dir), "--kinds", "power=1", "--no-live"]
    result = await run_xpemu([*args, "--pager-cmd", "false", "--start-timeout", "5"], bound=60)
    assert result.returncode == 2
    assert "pager did not attach" in one_line_error(result)
    _nothing_left(run_dir)


@needs_fuse
async def test_ctrl_c_twice_during_power_faults_leaves_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    argv = [*XPEMU, "stress", "--run-dir", str(run_dir), "--kinds", "power=1", "--no-live"]
    with trio.fail_after(90):
        proc = await trio.lowlevel.open_process(
            [*argv, "--duration", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            buf = bytearray()
            while b"workload]" not in buf:
                data = await proc.stdout.receive_some(4096)
                assert data, bytes(buf)
                buf.extend(data)
            proc.send_signal(signal.SIGINT)
            while b"stopping" not in buf:
                data = await proc.stdout.receive_some(4096)
                assert data, bytes(buf)
                buf.extend(data)
            proc.send_signal(signal.SIGINT)
            rc = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert rc == 130, bytes(buf)
    _nothing_left(run_dir)
