"""The policy lab (issue 20): trace files, Mattson's curve, ARC, plug-in checks, and
`xpemu policy` on good and bad input."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trio

from hv.trace import TraceRecorder
from hv.trace_format import HEADER_SIZE
from pager.policy import PolicyLoadError, check_policy, make_policy
from stack.benchlib import belady_faults, lru_faults
from stack.policylab.reference import arc_faults, lfu_faults, lru_curve
from stack.policylab.replay import ReplayError, TraceMemory
from stack.policylab.traces import (
    TRACE_DTYPE,
    TraceError,
    loop_trace,
    read_records,
    read_trace,
)

PY = sys.executable
#: A small block, so that a test fills one fast.
BLOCK = 4096

#: A plug-in that implements the interface without the project's base class: FIFO.
FIFO = '''
from collections import deque


class Fifo:
    """First in, first out: the oldest resident gfn goes."""

    name = "fifo"

    def __init__(self, nr_gfns, accessed):
        self.queue = deque(range(nr_gfns))
        self.resident = bytearray(b"\\x01") * nr_gfns

    async def choose(self, n, skip):
        out = []
        for g in self.queue:
            if len(out) == n:
                break
            if self.resident[g] and not skip(g):
                out.append(g)
        return out

    def paged_out(self, gfn):
        self.resident[gfn] = 0

    def paged_in(self, gfn, *, mru=True):
        self.resident[gfn] = 1
        self.queue.remove(gfn)
        self.queue.append(gfn)

    def dropped(self, gfn):
        self.resident[gfn] = 1


class NoDropped(Fifo):
    dropped = None


class SyncChoose(Fifo):
    def choose(self, n, skip):
        return []


class WrongInit(Fifo):
    def __init__(self, nr_gfns):
        super().__init__(nr_gfns, None)


class Sleeper(Fifo):
    async def choose(self, n, skip):
        import trio

        await trio.sleep(0)
        return []
'''


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "labplug.py").write_text(FIFO)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def fifo_faults(trace: list[int], capacity: int) -> int:
    resident: list[int] = []
    faults = 0
    for g in trace:
        if g not in resident:
            faults += 1
            resident.append(g)
            if len(resident) > capacity:
                resident.pop(0)
    return faults


def test_a_plugin_replays_like_the_policy_it_implements(plugin_dir: Path) -> None:
    trace = [random.Random(1).randrange(50) for _ in range(3000)]
    assert TraceMemory("labplug:Fifo", 50, 12).run(trace) == fifo_faults(trace, 12)


def test_a_class_that_does_not_implement_the_interface_is_refused_in_one_line(
    plugin_dir: Path,
) -> None:
    check_policy("labplug:Fifo")
    for spec, why in (
        ("labplug:NoDropped", "no `dropped` method"),
        ("labplug:SyncChoose", "no `async def choose"),
        ("labplug:WrongInit", "constructor does not take (nr_gfns, accessed)"),
        ("labplug:Nothing", "labplug has no Nothing"),
        ("nosuchmodule_xyz:Fifo", "cannot import nosuchmodule_xyz"),
        ("lru", "unknown policy 'lru'"),
    ):
        with pytest.raises(PolicyLoadError) as info:
            check_policy(spec)
        assert why in str(info.value) and "\n" not in str(info.value), str(info.value)
    with pytest.raises(ReplayError, match="awaited something other"):
        TraceMemory("labplug:Sleeper", 10, 2).run(list(range(10)))


def test_mattson_curve_equals_exact_lru_at_every_size() -> None:
    rng = random.Random(5)
    trace = [rng.randrange(40) if rng.random() < 0.7 else rng.randrange(200) for _ in range(3000)]
    curve = lru_curve(trace, 210)
    for c in range(211):
        assert curve[c] == lru_faults(trace, c), c
    # The check catches an off-by-one in the depth (hit when depth <= C): planted here.
    shifted = np.concatenate((curve[1:], curve[-1:]))
    assert any(shifted[c] != lru_faults(trace, c) for c in range(211))


def test_arc_between_the_optimum_and_lru_and_resists_a_scan() -> None:
    rng = random.Random(6)
    trace = [rng.randrange(30) if rng.random() < 0.8 else rng.randrange(300) for _ in range(5000)]
    for c in (1, 5, 20, 60, 400):
        arc = arc_faults(trace, c)
        assert belady_faults(trace, c) <= arc <= len(trace)
    assert arc_faults(trace, 400) == len(set(trace))  # everything fits: first touches only
    # A hot set, one scan of 500 gfns touched once, the hot set again: LRU lets the scan
    # push the hot set out; ARC keeps it in T2 (used twice), so only the scan faults.
    hot = [rng.randrange(50) for _ in range(3000)]
    trace = [*hot, *range(100, 600), *hot]
    assert lru_faults(trace, 100) == 50 + 500 + 50
    assert arc_faults(trace, 100) == 50 + 500


def _lfu_by_scan(trace: list[int], capacity: int) -> int:
    """Perfect LFU the slow, obvious way: on each eviction, scan every resident gfn."""
    counts: dict[int, int] = {}
    last: dict[int, int] = {}
    resident: set[int] = set()
    faults = 0
    for i, g in enumerate(trace):
        counts[g] = counts.get(g, 0) + 1
        last[g] = i
        if g in resident:
            continue
        faults += 1
        if capacity <= 0:
            continue
        if len(resident) >= capacity:
            resident.remove(min(resident, key=lambda h: (counts[h], last[h])))
        resident.add(g)
    return faults


def test_perfect_lfu_matches_the_obvious_scan_and_keeps_the_frequent() -> None:
    rng = random.Random(7)
    trace = [rng.randrange(25) if rng.random() < 0.75 else rng.randrange(250) for _ in range(4000)]
    for c in (0, 1, 3, 10, 40, 120, 300):
        assert lfu_faults(trace, c) == _lfu_by_scan(trace, c), c
    # Frequent gfns survive a scan that LRU lets push them out; a count that decays
    # nowhere is also LFU's weakness: an old hot set stays after the accesses moved on.
    hot = [rng.randrange(50) for _ in range(3000)]
    trace = [*hot, *range(100, 600), *hot]
    assert lfu_faults(trace, 100) == 50 + 500
    moved = [*(g % 50 for g in range(5000)), *(100 + g % 50 for g in range(5000))]
    assert lfu_faults(moved, 60) > 4000  # the second set thrashes in the 10 frames left


async def test_recorder_writes_what_the_reader_reads_and_survives_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    rec = TraceRecorder(str(path), nr_gfns=1000, vcpus=3, domid=1, block_records=BLOCK)
    n = BLOCK + 10
    for i in range(n):
        rec.record(i % 1000, i % 3, i % 2 == 1, i % 3 == 0)
        if i == BLOCK - 1:
            await trio.sleep(0.002)  # time moves on: later records carry a later t_us
    # Not closed (as when hv is SIGKILLed): the sealed block is there, whole.
    assert rec.blocks == 1 and path.stat().st_size > HEADER_SIZE
    assert len(read_trace(path).gfns) == BLOCK
    rec.close()
    recs = read_records(path)
    assert len(recs) == n and recs["gfn"].tolist() == [i % 1000 for i in range(n)]
    assert recs["vcpu"].tolist() == [i % 3 for i in range(n)]
    assert recs["write"].tolist() == [i % 2 for i in range(n)]
    assert recs["t_us"][-1] >= 2000 and recs["t_us"][0] == 0
    trace = read_trace(path)
    assert trace.nr_gfns == 1000 and trace.live_faults == (n + 2) // 3
    assert trace.info["blocks"] == 2 and "dropped" not in trace.info
    # A torn last block (hv killed mid-write) is dropped, the rest read.
    with path.open("ab") as f:
        f.write(b"\1\2\3")
    trace = read_trace(path)
    assert len(trace.gfns) == n and "block 2 at byte" in str(trace.info["dropped"])


async def test_xptrace1_files_are_still_read(tmp_path: Path) -> None:
    path = tmp_path / "v1.bin"
    n = 300
    recs = np.zeros(n, TRACE_DTYPE)
    recs["gfn"] = [i * 7 % 500 for i in range(n)]
    recs["vcpu"] = [i % 2 for i in range(n)]
    recs["outcome"] = [i % 5 == 0 for i in range(n)]
    # t_us wraps once: the reader unwraps it
    recs["t_us"] = (np.arange(n, dtype=np.int64) * 20_000_000) % (1 << 32)
    head = struct.pack("<8sHHHHII", b"XPTRACE1", 1, 64, 12, 2, 500, 1).ljust(64, b"\0")
    path.write_bytes(head + recs.tobytes() + b"\7\7")  # and a torn last record
    back = read_records(path)
    assert back["gfn"].tolist() == recs["gfn"].tolist()
    assert back["t_us"].tolist() == [i * 20_000_000 for i in range(n)]
    trace = read_trace(path)
    assert trace.info["format"] == "XPTRACE1" and trace.info["vcpus"] == 2
    assert trace.nr_gfns == 500 and trace.live_faults == n // 5


def test_trace_files_of_the_wrong_format_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("gfn,op\n1,read\n")
    with pytest.raises(TraceError, match="not a trace"):
        read_trace(bad)
    floats = tmp_path / "floats.npy"
    np.save(floats, np.array([1.5, 2.5]))
    with pytest.raises(TraceError, match="1-D integer array"):
        read_trace(floats)
    gfns = tmp_path / "gfns.npy"
    np.save(gfns, np.array([3, 1, 3, 7]))
    assert read_trace(gfns).gfns == [3, 1, 3, 7] and read_trace(gfns).nr_gfns == 8


def run_policy_cmd(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "stack", "policy", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=100,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_policy_command_with_a_plugin_prints_the_table_and_draws_the_curves(
    plugin_dir: Path,
) -> None:
    # From the plug-in's directory, as a newcomer runs it: `mypolicy:MyPolicy` is found there.
    res = run_policy_cmd(
        plugin_dir,
        "--trace",
        "scan",
        "--gfns",
        "400",
        "--length",
        "4000",
        "--policy",
        "labplug:Fifo",
        "--plot",
        "curves.svg",
        "--json",
        "out.json",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    for row in (
        "Belady's optimum",
        "exact LRU",
        "ARC (exact)",
        "perfect LFU",
        "xenpaging",
        "car",
        "Fifo",
    ):
        assert row in res.stdout
    assert (plugin_dir / "curves.svg").read_text().lstrip().startswith("<?xml")
    import json

    out = json.loads((plugin_dir / "out.json").read_text())
    loop = loop_trace(400, 4000, 300, seed=11)
    assert out["faults"]["labplug:Fifo"] == [fifo_faults(loop, c) for c in out["sizes"]]
    assert out["faults"]["lru"] == [lru_faults(loop, c) for c in out["sizes"]]


def test_policy_command_bad_input_is_one_line_exit_2(plugin_dir: Path) -> None:
    (plugin_dir / "notes.txt").write_text("hello\n")
    assert "not a trace" in one_line(run_policy_cmd(plugin_dir, "--trace", "notes.txt"))
    assert "cannot read" in one_line(run_policy_cmd(plugin_dir, "--trace", "missing.bin"))
    line = one_line(run_policy_cmd(plugin_dir, "--gfns", "100", "--sizes", "50,101"))
    assert "larger than the trace's 100 gfns" in line
    line = one_line(run_policy_cmd(plugin_dir, "--policy", "labplug:NoDropped"))
    assert "does not implement the pager's policy interface" in line
    assert ".png or .svg" in one_line(run_policy_cmd(plugin_dir, "--plot", "x.jpg"))
    assert "not a frame count" in one_line(run_policy_cmd(plugin_dir, "--sizes", "0,10%"))


def test_pager_refuses_a_class_that_does_not_implement_the_interface(plugin_dir: Path) -> None:
    res = subprocess.run(
        [PY, "-m", "pager", "--run-dir", ".", "--state-dir", ".", "--policy", "labplug:SyncChoose"],
        cwd=plugin_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "no `async def choose" in res.stderr


def test_make_policy_builds_a_plugin_with_the_pagers_arguments(plugin_dir: Path) -> None:
    async def accessed(start: int, count: int) -> bytes:
        return bytes((count + 7) // 8)

    pol = make_policy("labplug:Fifo", 7, accessed)
    assert type(pol).__name__ == "Fifo" and len(pol.resident) == 7  # type: ignore[attr-defined]


def test_clock2q_keeps_part_of_a_loop_larger_than_memory_and_a_used_set_through_a_scan() -> None:
    loop = loop_trace(600, 12_000, 250, seed=2)  # 250 gfns looping through 200 frames
    assert lru_faults(loop, 200) == 12_000
    assert TraceMemory("clock2q", 600, 200).run(loop) < 0.7 * 12_000
    rng = random.Random(3)
    hot = [rng.randrange(50) for _ in range(3000)]
    # A used set, a one-off scan, the set again. Memory starts full, as the pager's does
    # (from empty, no `choose` would run before the scan to see the set used): only the
    # set's first touches and the scan fault; clock loses the set to the scan.
    trace = [*hot, *range(100, 600), *hot]
    assert TraceMemory("clock2q", 600, 100, "full").run(trace) == 50 + 500
    assert TraceMemory("clock", 600, 100, "full").run(trace) == 50 + 500 + 50


async def test_bench_policy_section_runs_a_plugin_beside_the_built_ins(plugin_dir: Path) -> None:
    from stack.bench import BenchOptions, Sizes, run_bench, table_rows

    sizes = Sizes(
        **{
            **BenchOptions().sizes.__dict__,
            "policy_gfns": 256,
            "policy_capacity": 64,
            "policy_len": 3000,
        }
    )
    opts = BenchOptions(only=("policy",), sizes=sizes, policies=("car", "labplug:Fifo"))
    res = await run_bench(opts, lambda s: None)
    scan = res["policy"]["traces"]["scan"]
    expected = fifo_faults(loop_trace(256, 3000, 80, 13), 64)
    assert scan["labplug:Fifo"] == pytest.approx(expected * 1000 / 3000)
    rows = {r[0] for r in table_rows(res)}
    assert {"scan: Fifo", "scan: ARC (exact)", "zipf: car"} <= rows
