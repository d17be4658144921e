"""`xpemu` end to end: real processes, real sockets, real clock, absolute timeouts.

Every run gets its own run directory, and every child command line names it, so a scan
of /proc for that path after the command exits finds any orphaned child.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import trio
from stack_helpers import PY, XPEMU, one_line_error, processes_mentioning, run_xpemu


def _no_leftovers(run_dir: Path) -> None:
    assert processes_mentioning(str(run_dir)) == []


def _json_lines(path: Path) -> int:
    """Every line of a child's log is one JSON object (passed through unchanged)."""
    n = 0
    for line in path.read_text().splitlines():
        if line.strip():
            assert isinstance(json.loads(line), dict), line
            n += 1
    return n


async def test_up_pages_out_and_in_with_every_byte_intact(tmp_path: Path) -> None:
    run_dir, report_path = tmp_path / "run", tmp_path / "report.json"
    result = await run_xpemu(
        [
            "up",
            "--duration",
            "10",
            "--nr-gfns",
            "1024",
            "--run-dir",
            str(run_dir),
            "--report",
            str(report_path),
            "--no-live",
        ],
        bound=90,
    )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "xpemu up: PASSED" in out
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["integrity_errors"] == 0 and report["stuck_vcpus"] == []
    assert report["pages"]["out"] > 100 and report["pages"]["in"] > 100
    assert report["pages"]["populated"] > 0  # the guest really touched paged-out memory
    assert report["guest"]["ops"] > 0 and report["guest"]["verified"] == 1024
    assert report["final_verify"]["verified"] == 1024
    assert report["final_status"]["paged_pages"] == 0
    assert report["store_after_pagein"]["rows"] == 0
    assert report["hv_violations"] == []
    # --duration bounds the run: the guest gets what start-up and the end checks leave of it
    # (10 s less the 5 s reserve) and ends by itself; a guest the stack had to stop would
    # be a violation. How long the run really took is a figure of the report, not a test.
    assert report["config"]["guest_duration"] == 5.0 and report["violations"] == []
    for name in ("hv", "pager", "guest"):
        assert _json_lines(run_dir / f"{name}.log") > 0
    _no_leftovers(run_dir)


async def _stress(tmp_path: Path, args: list[str], bound: float) -> tuple[int, dict, str]:
    run_dir, report_path = tmp_path / "run", tmp_path / "report.json"
    result = await run_xpemu(
        ["stress", "--run-dir", str(run_dir), "--report", str(report_path), "--no-live", *args],
        bound=bound,
    )
    out = result.stdout.decode() + result.stderr.decode()
    assert "Traceback" not in out, out
    report = json.loads(report_path.read_text())
    _no_leftovers(run_dir)
    return result.returncode, report, out


def _assert_survived(rc: int, report: dict, out: str) -> None:
    assert rc == 0, out
    assert report["ok"], report["violations"]
    assert report["integrity_errors"] == 0 and report["lost_gfns"] == 0
    assert report["stuck_vcpus"] == []
    assert report["hv_violations"] == [] and report["violations"] == []
    assert report["final_verify"]["verified"] == report["config"]["nr_gfns"]
    store = report["store_before_pagein"]
    assert store["error"] is None and store["missing"] == [] and store["bad_checksum"] == []
    # The check really read the pager's store: pages were out when it was killed.
    assert store["frameless"] > 0 and store["rows"] >= store["frameless"]
    assert report["store_after_pagein"]["rows"] == 0


async def test_stress_short_schedule_loses_nothing(tmp_path: Path) -> None:
    rc, report, out = await _stress(
        tmp_path, ["--seed", "5", "--duration", "14", "--faults", "7"], bound=90
    )
    _assert_survived(rc, report, out)
    assert sum(report["faults_injected"].values()) == 7
    assert report["pager"]["pager_deaths"] >= 5
    assert report["pager"]["restarts_survived"] >= 5
    assert report["seed"] == 5 and len(report["schedule"]) == 7


async def test_stress_twenty_pager_kills_lose_nothing(tmp_path: Path) -> None:
    rc, report, out = await _stress(
        tmp_path,
        [
            "--seed",
            "4",
            "--duration",
            "40",
            "--faults",
            "24",
            "--kinds",
            "kill=4,crash=4,cut=1,store=1",
        ],
        bound=120,  # a hang guard: --duration 40 bounds the run
    )
    _assert_survived(rc, report, out)
    pager = report["pager"]
    assert sum(report["faults_injected"].values()) == 24  # every fault played
    assert pager["kills"] + pager["crash_points_fired"] >= 20
    assert pager["kills"] >= 5 and pager["crash_points_fired"] >= 3  # both kinds, mixed


async def test_kills_wait_for_an_attach_when_the_pager_starts_slowly(tmp_path: Path) -> None:
    """Kills spaced closer than a pager's start: never two in a row before an attach.

    The wrapper makes every pager take 1.5 s more to start than the faults' spacing (about
    1.1 s). Played as planned, the kills would land on restart after restart and the
    vCPUs would wait through the whole storm, past `--stuck-after`.
    """
    slow = tmp_path / "slow_pager.py"
    slow.write_text(
        "import runpy, sys, time\n"
        "time.sleep(1.5)\n"
        "sys.argv[0] = 'pager'\n"
        "runpy.run_module('pager', run_name='__main__', alter_sys=True)\n"
    )
    args = ["--seed", "3", "--duration", "16", "--faults", "12", "--kinds", "kill"]
    args += ["--stuck-after", "8", "--pager-cmd", f"{PY} {slow}"]
    rc, report, out = await _stress(tmp_path, args, bound=150)
    _assert_survived(rc, report, out)
    held = [f["held_s"] for f in report["faults_log"] if f.get("held_s", 0) >= 0.5]
    assert len(held) >= 3, report["faults_log"]  # held for an attach, not played as planned
    assert report["pager"]["kills"] >= 10  # every kill was still played


async def test_xen_ring_mode_reports_stuck_vcpus_instead_of_hanging(tmp_path: Path) -> None:
    rc, report, out = await _stress(
        tmp_path,
        [
            "--seed",
            "2",
            "--duration",
            "12",
            "--ring-mode",
            "xen",
            "--stuck-after",
            "3",
            "--kinds",
            "kill",
        ],
        bound=60,
    )
    assert rc == 1
    assert report["ring_orphaned"] is True
    assert report["pager"]["never_attached"] >= 1  # the new pager was refused
    assert report["final_status"]["pager"]["orphaned"] is True
    assert report["stuck_vcpus"], report
    assert not report["ok"]
    assert "XEN RING MODE" in out and "stuck vCPUs" in out
    # Not hanging: the guest gave up on its stuck vCPUs by itself (the stack did not have
    # to kill it), and the run ended within the test's bound.
    assert not any("did not finish" in v for v in report["violations"])


async def test_same_seed_same_schedule_from_the_command_line() -> None:
    args = ["stress", "--seed", "9", "--duration", "30", "--schedule-only"]
    first = await run_xpemu(args, bound=30)
    second = await run_xpemu(args, bound=30)
    other = await run_xpemu(
        ["stress", "--seed", "10", "--duration", "30", "--schedule-only"], bound=30
    )
    assert first.returncode == 0 and first.stdout == second.stdout
    assert json.loads(first.stdout)["seed"] == 9
    assert json.loads(first.stdout)["schedule"] != json.loads(other.stdout)["schedule"]


# ---- bad input: one line, non-zero, no traceback, no orphans ---------------------------


async def test_unknown_option(tmp_path: Path) -> None:
    result = await run_xpemu(["up", "--bogus"], bound=30)
    assert result.returncode == 2
    assert "unrecognized arguments: --bogus" in one_line_error(result)


async def test_run_dir_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = await run_xpemu(["up", "--duration", "5", "--run-dir", str(blocker / "run")], 30)
    assert result.returncode == 2
    assert "not writable" in one_line_error(result)


async def test_missing_hv_binary(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = await run_xpemu(
        ["up", "--duration", "5", "--run-dir", str(run_dir), "--hv-cmd", "/nonexistent/hv"], 30
    )
    assert result.returncode == 2
    assert "cannot start hv" in one_line_error(result)
    _no_leftovers(run_dir)


async def test_hv_that_fails_to_start(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    hv_cmd = f"{PY} -c 'import sys; print(\"no frames for you\", file=sys.stderr); sys.exit(3)'"
    result = await run_xpemu(
        ["up", "--duration", "5", "--run-dir", str(run_dir), "--hv-cmd", hv_cmd], 30
    )
    assert result.returncode == 2
    line = one_line_error(result)
    assert "hv exited with status 3" in line and "no frames for you" in line
    _no_leftovers(run_dir)


async def test_pager_that_will_not_start(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    pager_cmd = f"{PY} -c 'import sys; sys.exit(1)' {run_dir}"
    result = await run_xpemu(
        [
            "up",
            "--duration",
            "10",
            "--run-dir",
            str(run_dir),
            "--pager-cmd",
            pager_cmd,
            "--start-timeout",
            "4",
        ],
        bound=60,
    )
    assert result.returncode == 2
    assert "pager did not attach" in one_line_error(result)
    _no_leftovers(run_dir)  # hv was started, and is gone


async def test_status_without_hv(tmp_path: Path) -> None:
    result = await run_xpemu(["status", "--run-dir", str(tmp_path)], bound=30)
    assert result.returncode == 2
    assert "no hv running" in one_line_error(result)


# ---- a running stack: status, Ctrl-C ---------------------------------------------------


async def _read_until(stream: trio.abc.ReceiveStream, needle: bytes, buf: bytearray) -> None:
    while needle not in buf:
        data = await stream.receive_some(4096)
        if not data:
            raise AssertionError(f"stream ended before {needle!r}: {bytes(buf)!r}")
        buf.extend(data)


async def test_status_of_a_running_hv(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with trio.fail_after(60):
        hv = await trio.lowlevel.open_process(
            [PY, "-m", "hv", "--run-dir", str(run_dir), "--nr-gfns", "300", "--target", "200"],
            stderr=subprocess.PIPE,
        )
        try:
            assert hv.stderr is not None
            await _read_until(hv.stderr, b'"hv.ready"', bytearray())
            as_json = await run_xpemu(["status", "--run-dir", str(run_dir), "--json"], 30)
            plain = await run_xpemu(["status", "--run-dir", str(run_dir)], 30)
            watch = await trio.lowlevel.open_process(
                [*XPEMU, "status", "--run-dir", str(run_dir), "--watch", "0.1"],
                stdout=subprocess.PIPE,
            )
            assert watch.stdout is not None
            seen = bytearray()
            while seen.count(b"dom1:") < 2:  # it refreshes
                data = await watch.stdout.receive_some(4096)
                assert data, bytes(seen)
                seen.extend(data)
            watch.send_signal(signal.SIGINT)
            assert await watch.wait() == 0  # Ctrl-C ends --watch cleanly
            # xentop's view: per vCPU, and page rates from the second look on.
            assert b"vcpu0: paused=no pauses=0 blocked=0.000s" in seen
            assert b"out/s=0 in/s=0" in seen
        finally:
            hv.terminate()
            await hv.wait()
    assert as_json.returncode == 0, as_json.stderr
    status = json.loads(as_json.stdout)
    dom = status["domains"][0]
    assert dom["nr_gfns"] == 300 and dom["target"] == 200 and dom["pager"]["attached"] is False
    assert [v["pauses"] for v in dom["vcpu_stats"]] == [0] * dom["vcpus"]
    assert "1" in status["counters"] or 1 in status["counters"]
    assert plain.returncode == 0 and "dom1: gfns=300" in plain.stdout.decode()


async def test_ctrl_c_stops_everything_cleanly(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with trio.fail_after(90):
        proc = await trio.lowlevel.open_process(
            [*XPEMU, "up", "--run-dir", str(run_dir), "--nr-gfns", "512", "--no-live"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None and proc.stderr is not None
            buf = bytearray()
            # The first progress line comes once the guest has run for a while.
            await _read_until(proc.stdout, b"workload]", buf)
            proc.send_signal(signal.SIGINT)
            async with trio.open_nursery() as nursery:
                err = bytearray()

                async def drain_err() -> None:
                    while data := await proc.stderr.receive_some(4096):
                        err.extend(data)

                nursery.start_soon(drain_err)
                while data := await proc.stdout.receive_some(4096):
                    buf.extend(data)
            rc = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    out = buf.decode()
    assert rc == 0, out + err.decode()
    assert "xpemu up: PASSED" in out and "Traceback" not in out + err.decode()
    _no_leftovers(run_dir)


async def test_a_lost_page_fails_the_run(tmp_path: Path) -> None:
    """The checks can fail: a disk that stops reading makes the pager lose pages (it marks
    them broken, the guest gets EIO), and `xpemu up` must say FAILED and exit 1."""
    run_dir, report_path = tmp_path / "run", tmp_path / "report.json"
    pager_cmd = f"env XPEMU_FAULTS=store.read=EIO@5+ {PY} -m pager"
    # Few pages out: each lost page costs the pager's read retries (~0.7 s) on first touch.
    result = await run_xpemu(
        [
            "up",
            "--duration",
            "8",
            "--nr-gfns",
            "256",
            "--target",
            "232",
            "--pattern",
            "uniform",
            "--run-dir",
            str(run_dir),
            "--report",
            str(report_path),
            "--no-live",
            "--pager-cmd",
            pager_cmd,
        ],
        bound=90,
    )
    out = result.stdout.decode()
    assert result.returncode == 1, out + result.stderr.decode()
    assert "xpemu up: FAILED" in out and "Traceback" not in out
    report = json.loads(report_path.read_text())
    assert not report["ok"]
    assert report["lost_gfns"] > 0 and report["integrity_errors"] > 0
    assert report["pages"]["broken"] > 0
    _no_leftovers(run_dir)


async def test_ctrl_c_twice_aborts_at_once_and_leaves_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with trio.fail_after(60):
        proc = await trio.lowlevel.open_process(
            [*XPEMU, "up", "--run-dir", str(run_dir), "--nr-gfns", "512", "--no-live"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None and proc.stderr is not None
            buf = bytearray()
            await _read_until(proc.stdout, b"workload]", buf)
            proc.send_signal(signal.SIGINT)
            await _read_until(proc.stdout, b"stopping", buf)
            proc.send_signal(signal.SIGINT)
            err = bytearray()
            async with trio.open_nursery() as nursery:

                async def drain_out() -> None:
                    while data := await proc.stdout.receive_some(4096):
                        buf.extend(data)

                nursery.start_soon(drain_out)
                while data := await proc.stderr.receive_some(4096):
                    err.extend(data)
            rc = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert rc == 130, buf.decode() + err.decode()
    lines = [ln for ln in err.decode().splitlines() if ln.strip()]
    assert lines == ["xpemu: error: interrupted; every child stopped"]
    _no_leftovers(run_dir)


async def test_hv_dying_mid_run_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with trio.fail_after(60):
        proc = await trio.lowlevel.open_process(
            [*XPEMU, "up", "--run-dir", str(run_dir), "--duration", "30", "--no-live"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None and proc.stderr is not None
            await _read_until(proc.stdout, b"workload]", bytearray())
            hv = [pid for pid, cmd in processes_mentioning(str(run_dir)) if " -m hv " in cmd]
            assert len(hv) == 1
            os.kill(hv[0], signal.SIGKILL)
            err = bytearray()
            while data := await proc.stderr.receive_some(4096):
                err.extend(data)
            rc = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert rc == 2
    lines = [ln for ln in err.decode().splitlines() if ln.strip()]
    assert len(lines) == 1 and "hv died during the run (status -9)" in lines[0], err
    _no_leftovers(run_dir)
