"""The bench's `lazyfs` section: its rows in the table, and one tiny run through FUSE."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from stack.bench import BenchOptions, Sizes, run_bench, table_rows
from stack.bench.procs import children_of
from stack.power import fuse_problem, mount_points

#: Only `repeats` and `tput_pages[64]` matter to this section.
TINY = Sizes(
    repeats=1,
    floor_n=0,
    pop_samples=0,
    pop_warm=0,
    par_reads=0,
    tput_pages={64: 64},
    recovery_pages=(),
    policy_gfns=0,
    policy_capacity=0,
    policy_len=0,
)


def test_its_row_sits_next_to_the_plain_disk_and_a_skip_has_none() -> None:
    res = {"lazyfs": {"batch": 64, "pages": 64, "plain_pps": 4000.0, "lazy_pps": 1000.0}}
    rows = {r[0]: r[1:] for r in table_rows(res)}
    assert rows["page-out, batch 64, lazy FS (power faults)"] == (
        "1000 pages/s",
        "4000 pages/s (plain disk)",
        "0.25x",
    )
    assert table_rows({"lazyfs": {"skipped": "no FUSE"}}) == []


@pytest.mark.skipif(fuse_problem() is not None, reason=str(fuse_problem()))
async def test_a_tiny_run_measures_both_and_leaves_no_mount_nor_child(tmp_path: Path) -> None:
    lines: list[str] = []
    opts = BenchOptions(only=("lazyfs",), sizes=TINY, work_dir=tmp_path)
    with trio.fail_after(120):
        res = await run_bench(opts, lines.append)
    lz = res["lazyfs"]
    assert lz["batch"] == 64 and lz["pages"] == 64
    assert len(lz["plain_runs"]) == len(lz["lazy_runs"]) == 1
    assert lz["plain_pps"] > 0 and lz["lazy_pps"] > 0
    assert "lazyfs..." in lines
    assert not [m for m in mount_points() if m.startswith(str(tmp_path))]
    (name,) = os.listdir(tmp_path)  # the run's own directory inside --work-dir
    run = tmp_path / name
    assert (run / "lazyfs-lazy" / "state").is_dir()  # the store put back
    assert not (run / "lazyfs-lazy" / "state.disk").exists()
    assert _running_children() == []  # hv, both pagers and the lazy FS are gone


def _running_children() -> list[int]:
    """Our child processes still alive (zombies excluded)."""
    out = []
    for pid in children_of(os.getpid()):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] != "Z":
                    out.append(pid)
        except OSError:
            pass
    return out
