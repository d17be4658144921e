"""The run directory's logs stay bounded: every process's log rotates at the cap that
`xpemu` passes on (XPEMU_LOG_MAX_BYTES), and the run still passes and shows progress."""

from __future__ import annotations

import os
from pathlib import Path

import trio
from stack_helpers import XPEMU, processes_mentioning

from transport.logs import ENV_LOG_MAX_BYTES

CAP = 600
#: One log line at most past the cap (rotation follows a whole line).
LINE_MAX = 600


async def test_up_rotates_every_log_at_the_cap(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, ENV_LOG_MAX_BYTES: str(CAP)}
    args = ["up", "--no-live", "--run-dir", str(run_dir), "--nr-gfns", "512", "--duration", "20"]
    with trio.fail_after(90):
        r = await trio.run_process(
            [*XPEMU, *args], capture_stdout=True, capture_stderr=True, check=False, env=env
        )
    out = r.stdout.decode()
    assert r.returncode == 0 and "xpemu up: PASSED" in out, out + r.stderr.decode()
    logs = {p.name: p.stat().st_size for p in run_dir.iterdir() if ".log" in p.name}
    # ~250 bytes a second of guest progress: the guest's log rotates every ~2 s.
    assert "guest.log.1" in logs, logs
    assert all(size <= CAP + LINE_MAX for size in logs.values()), logs
    assert not [n for n in logs if n.endswith(".2")]
    # The live progress kept reading the guest's log across its rotations: its last figure
    # (~10 s into 13 s of workload) is most of the final count, not the count at ~2 s.
    lines = [ln for ln in out.splitlines() if "workload]" in ln]
    seen = [int(ln.split("guest ops=")[1].split()[0]) for ln in lines]
    final = int(out.split("  guest ops ")[1].split()[0])
    assert seen and seen[-1] > 0.5 * final, (seen, final)
    assert processes_mentioning(str(run_dir)) == []
