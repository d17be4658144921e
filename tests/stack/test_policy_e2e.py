"""The policy lab end to end, as a newcomer uses it (issue 20): `xpemu up --record-trace`,
then `xpemu policy --trace rec.bin --policy mypolicy:MyPolicy` with the example copied."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import trio
from stack_helpers import XPEMU, one_line_error, run_xpemu

from stack.policylab.replay import replay_faults
from stack.policylab.traces import read_trace

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mypolicy.py"
NR, TARGET = 512, 256


async def test_record_a_run_then_compare_the_example_policy_on_it(tmp_path: Path) -> None:
    rec, report = tmp_path / "rec.bin", tmp_path / "report.json"
    result = await run_xpemu(
        [
            "up", "--duration", "8", "--nr-gfns", str(NR), "--run-dir", str(tmp_path / "run"),
            "--policy", "car", "--record-trace", str(rec), "--report", str(report), "--no-live",
            "--reserve", "0",  # the lab replays at the target itself: no reserve below it
        ],
        bound=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    rep = json.loads(report.read_text())
    trace = read_trace(rec)
    # Every guest access is one record; hv's populates for guest faults are the recorded
    # faults (a retry after a pause is not recorded again, and here none re-faulted).
    assert trace.info["records"] >= rep["guest"]["ops"] > 0
    # XPTRACE2: compressed blocks, a few bytes a record where XPTRACE1 took 12.
    assert trace.info["format"] == "XPTRACE2" and "dropped" not in trace.info
    assert rec.stat().st_size < 5 * int(str(trace.info["records"]))
    assert trace.live_faults == rep["pages"]["populated"] > 0
    assert trace.live_span is not None
    # Replayed at the target up to the last live fault, memory full at the start as the
    # pager found it, car faults about as often as the live car did. Not exactly: the live
    # pager pages out in batches, behind the faults (tot_pages runs over the target by a
    # few pages), and reads the accessed bits at other moments (docs/policy.md).
    replay = replay_faults("car", trace.gfns[: trace.live_span], NR, TARGET, "full")
    assert abs(replay - trace.live_faults) <= 0.15 * trace.live_faults + 20, (
        replay,
        trace.live_faults,
    )

    # The newcomer: copy the example, run the lab on the recording, from its directory.
    work = tmp_path / "lab"
    work.mkdir()
    shutil.copy(EXAMPLE, work / "mypolicy.py")
    t0 = time.monotonic()
    with trio.fail_after(120):
        res = await trio.run_process(
            [*XPEMU, "policy", "--trace", str(rec), "--policy", "mypolicy:MyPolicy"],
            cwd=work,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = res.stdout.decode()
    assert res.returncode == 0, out + res.stderr.decode()
    assert time.monotonic() - t0 < 60
    assert "MyPolicy" in out and "Belady's optimum" in out and "the live pager saw" in out
    assert (work / "policy-curves.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("command", ["up", "stress"])
async def test_record_trace_into_a_missing_directory_is_one_line(
    tmp_path: Path, command: str
) -> None:
    result = await run_xpemu(
        [command, "--record-trace", str(tmp_path / "nope" / "rec.bin"), "--duration", "5"],
        bound=30,
    )
    assert result.returncode == 2
    assert "--record-trace: no directory" in one_line_error(result)
