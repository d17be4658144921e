"""`python -m guest` as a real process: against a real hv process, and on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

GUEST = [sys.executable, "-m", "guest"]


async def _run(args: list[str], bound: float = 30) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(bound):
        return await trio.run_process(
            [*GUEST, *args], capture_stdout=True, capture_stderr=True, check=False
        )


def _one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    err = result.stderr.decode()
    assert "Traceback" not in err + result.stdout.decode()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--pattern", "nope"], "invalid choice"),
        (["--write-ratio", "2"], "write ratio"),
        (["--stuck-after", "0"], "stuck-after"),
        (["--verify-only"], "--shadow"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
async def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    result = await _run(["--run-dir", str(tmp_path), *args])
    assert result.returncode == 2
    assert says in _one_line(result)


async def test_no_hv_is_one_line_after_the_connect_timeout(tmp_path: Path) -> None:
    result = await _run(["--run-dir", str(tmp_path), "--connect-timeout", "0.5"])
    assert result.returncode == 2
    assert "no hv at" in _one_line(result)


async def test_guest_process_against_hv_process_then_verify_only(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    report, shadow = tmp_path / "report.json", tmp_path / "shadow"
    with trio.fail_after(60):
        hv = await trio.lowlevel.open_process(
            [sys.executable, "-m", "hv", "--run-dir", str(run), "--nr-gfns", "200", "--vcpus", "3"],
            stderr=subprocess.PIPE,
        )
        try:
            buf = bytearray()
            assert hv.stderr is not None
            while b'"hv.ready"' not in buf:
                data = await hv.stderr.receive_some(4096)
                assert data, bytes(buf)
                buf.extend(data)
            first = await _run(
                [
                    "--run-dir",
                    str(run),
                    "--duration",
                    "1",
                    "--seed",
                    "3",
                    "--balloon-every",
                    "0.2",
                    "--report",
                    str(report),
                    "--shadow",
                    str(shadow),
                ]
            )
            again = await _run(["--run-dir", str(run), "--verify-only", "--shadow", str(shadow)])
        finally:
            hv.terminate()
            await hv.wait()
    assert first.returncode == 0, first.stderr.decode()[-2000:]
    assert "guest: OK" in first.stdout.decode()
    data = json.loads(report.read_text())
    assert data["ok"] and data["vcpus"] == 3 and data["verified"] == 200 and data["ops"] > 0
    assert again.returncode == 0 and "verified 200/200" in again.stdout.decode()
