"""Running `xpemu` as a real process in tests, and finding any child it left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio

#: The installed console script when present (what users run), else the module.
_SCRIPT = Path(sys.executable).parent / "xpemu"
XPEMU = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "stack"]

#: The test's python (the venv's), for stand-in commands and for hv itself.
PY = sys.executable


async def run_xpemu(args: list[str], bound: float) -> subprocess.CompletedProcess[bytes]:
    """Run `xpemu ARGS` to completion within `bound` seconds (killed if it takes longer)."""
    with trio.fail_after(bound):
        return await trio.run_process(
            [*XPEMU, *args], capture_stdout=True, capture_stderr=True, check=False
        )


def processes_mentioning(marker: str) -> list[tuple[int, str]]:
    """Live processes (not us) whose command line contains `marker`: leftovers of a run."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
        if marker in cmdline and state != "Z":
            found.append((int(entry), cmdline))
    return found


def one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    """The stderr of a failed run, checked to be exactly one line and no traceback."""
    err = result.stderr.decode()
    out = result.stdout.decode()
    assert "Traceback" not in err and "Traceback" not in out, err + out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]
