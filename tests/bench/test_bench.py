"""`xpemu bench`'s own logic: trace driving of the real policies, the table, the command
line, the probes, and one small run of the process sections (no figure is asserted)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from pager import PageStore, RealDisk, Row, checksum
from pager.policy import POLICIES
from stack import bench
from stack.bench import (
    BenchOptions,
    Sizes,
    TraceMemory,
    recovered_seconds,
    render_table,
    run_bench,
    table_rows,
)
from stack.benchlib import a0_faults, belady_faults, hotset_trace, zipf_ranking, zipf_trace
from stack.cli import main as xpemu_main

TINY = Sizes(
    repeats=1,
    floor_n=50,
    pop_samples=20,
    pop_warm=2,
    par_reads=20,
    tput_pages={1: 4, 16: 32, 64: 64, 256: 256},
    recovery_pages=(300,),
    policy_gfns=256,
    policy_capacity=64,
    policy_len=4000,
    vcpu_counts=(4,),
)


@pytest.mark.parametrize("policy", POLICIES)
def test_trace_memory_never_beats_optimal_and_evicts_only_residents(policy: str) -> None:
    for trace in (
        zipf_trace(300, 5000, 0.99, seed=1),
        hotset_trace(300, 5000, hot=20, shift_every=1000, hot_fraction=0.9, seed=2),
    ):
        mem = TraceMemory(policy, 300, 40)
        faults = mem.run(trace)  # KeyError if a victim was not resident
        assert belady_faults(trace, 40) <= faults <= len(trace)
        assert len(mem.resident) == 40
        # The policy's own view agrees: exactly the non-resident gfns are paged out.
        assert {g for g in range(300) if mem.policy.paged[g]} == set(range(300)) - mem.resident


@pytest.mark.parametrize("policy", POLICIES)
def test_trace_memory_counts_only_first_touches_when_everything_fits(policy: str) -> None:
    trace = [5, 1, 5, 2, 1, 5, 3, 2]
    mem = TraceMemory(policy, 8, 4)
    assert mem.run(trace) == 4 == belady_faults(trace, 4)


def test_clock_keeps_a_hot_gfn_that_xenpaging_sweeps_out() -> None:
    # gfn 0 is touched between every two cold gfns: clock's accessed bit keeps it resident
    # (one extra fault at most: bits are fetched a window ahead of the hand), while
    # xenpaging, its MRU list longer than the memory, takes the lowest gfn: 0, every time.
    trace = [g for cold in range(1, 200) for g in (0, cold)]
    clock = TraceMemory("clock", 200, 4).run(trace)
    assert belady_faults(trace, 4) == 200 <= clock <= 201
    assert TraceMemory("xenpaging", 200, 4).run(trace) > 1.9 * clock


def test_car_keeps_frequent_gfns_that_clock_loses_on_zipf() -> None:
    # Independent draws: car's second clock (gfns used again) holds the frequent gfns that
    # clock (recency only) lets go; A0, knowing every probability, bounds both.
    n, cap = 1024, 256
    trace = zipf_trace(n, 40_000, 0.99, seed=3)
    a0 = a0_faults(trace, cap, zipf_ranking(n, seed=3))
    car = TraceMemory("car", n, cap).run(trace)
    clock = TraceMemory("clock", n, cap).run(trace)
    assert belady_faults(trace, cap) < a0 <= car < clock


RESULT = {
    "mode": "quick",
    "repeats": 3,
    "total_s": 12.0,
    "machine": {
        "cores": 2,
        "python": "3.11.7",
        "disk": "/dev/vda ext4",
        "loadavg_start": (1.0, 2.0, 3.0),
        "loadavg_end": (1.5, 2.0, 3.0),
    },
    "floor": {"p50_us": 100.0, "p99_us": 400.0, "per_s_4vcpu": 8000.0},
    "populate": {
        "latency": {"p50_us": 250.0, "p99_us": 800.0, "floor_p50_us": 125.0, "floor_p99_us": 200.0},
        "pageins_per_s_4vcpu": 2000.0,
        "pageins_per_s_4vcpu_runs": [2000.0],
    },
    "throughput": {
        "batches": {64: {"pageout_pps": 5000.0, "pagein_pps": 8000.0, "floor_pps": 20000.0}}
    },
    "recovery": {
        100000: {"start_to_first_served_s": 0.5, "pager_recover_s": 0.1, "floor_start_s": 0.25}
    },
    "memory": {
        "hv": {"rss_per_gfn": 6.0, "traced_per_gfn": 6.5},
        "pager": {"memory_per_row": 160.0, "disk_per_row": 32.0},
    },
    "policy": {
        "nr_gfns": 100,
        "capacity": 10,
        "accesses": 1000,
        "traces": {
            "zipf": {
                "belady": 100.0,
                "clock": 130.0,
                "clock_ratio": 1.3,
                "a0": 120.0,
                "a0_ratio": 1.2,
                "car": 125.0,
                "car_ratio": 1.25,
            },
        },
    },
}


def test_table_puts_each_figure_next_to_its_floor() -> None:
    rows = {r[0]: r[1:] for r in table_rows(RESULT)}
    # Against the echo measured between the populates, not the floor section's.
    assert rows["populate p50, 1 vCPU"] == ("250 µs", "125 µs (beside)", "2.00x")
    assert rows["populate p99, 1 vCPU"] == ("800 µs", "200 µs (beside)", "4.00x")
    assert rows["page-ins/s, 4 vCPUs"] == ("2000/s", "8000 echo/s, 4 callers", "0.25x")
    assert rows["page-out, batch 64"] == ("5000 pages/s", "20000 pages/s", "0.25x")
    assert rows["page-in, batch 64"][2] == "0.40x"
    assert rows["recovery, 100,000 pages out"] == ("0.500 s", "0.250 s (start+imports)", "2.00x")
    assert rows["zipf: clock"] == ("130.0 faults/1k", "100.0 faults/1k", "1.30x")
    assert rows["zipf: online bound (A0)"] == ("120.0 faults/1k", "100.0 faults/1k", "1.20x")
    assert rows["zipf: car"][2] == "1.25x"
    assert "zipf: LRU (exact)" not in rows  # not in this result: no row
    text = render_table(RESULT)
    assert "2 cores, Python 3.11.7" in text and "load average 1.00 2.00 3.00" in text
    assert "memory of 10 frames, the same for every policy" in text.splitlines()[-1]
    assert len({len(line) for line in text.splitlines()[1:3]}) == 1  # header and rule align


def _mode(pageins: float, cpu: tuple[float, float, float]) -> dict:
    return {
        "latency": {"p50_us": 600.0, "p99_us": 900.0, "floor_p50_us": 200.0, "floor_p99_us": 300.0},
        "vcpus": {
            16: {
                "pageins_per_s": pageins,
                "echo_per_s": 20000.0,
                "cpu_us_hv": cpu[0],
                "cpu_us_pager": cpu[1],
                "cpu_us_guest": cpu[2],
                "echo_cpu_us_echo": 20.0,
                "echo_cpu_us_guest": 30.0,
            }
        },
    }


def test_table_has_each_ring_mode_and_the_cpu_per_pagein_beside_the_echo() -> None:
    modes = {"reattach": _mode(5000.0, (100.0, 150.0, 50.0)), "xen": _mode(4000.0, (1, 2, 3))}
    res = {**RESULT, "populate": {**RESULT["populate"], "modes": modes}}
    rows = table_rows(res)
    by_name = {r[0]: r[1:] for r in rows}
    assert by_name["populate p50, 1 vCPU, reattach"] == ("600 µs", "200 µs (beside)", "3.00x")
    assert by_name["populate p99, 1 vCPU, xen"] == ("900 µs", "300 µs (beside)", "3.00x")
    assert by_name["page-ins/s, 16 vCPUs, reattach"] == (
        "5000/s",
        "20000 echo/s, 16 callers",
        "0.25x",
    )
    assert by_name["page-ins/s, 16 vCPUs, xen"][2] == "0.20x"
    names = [r[0] for r in rows]
    # The CPU row follows its page-ins/s row: hv+pager+guest against echo+caller.
    cpu = rows[names.index("page-ins/s, 16 vCPUs, reattach") + 1]
    assert cpu[1:] == ("300 µs (100+150+50)", "50 µs/rt (20+30)", "6.00x")
    assert cpu[0] == "  CPU/page-in (hv+pager+guest)"
    assert "populate p50, 1 vCPU" not in by_name  # one table: the per-mode rows only


def _without_beside(res: dict) -> dict:
    """A result as benches before the interleaved echo wrote it."""
    lat = {k: v for k, v in res["populate"]["latency"].items() if not k.startswith("floor_")}
    return {**res, "populate": {**res["populate"], "latency": lat}}


def test_table_of_a_partial_run_has_no_floor_it_did_not_measure() -> None:
    partial = _without_beside({k: v for k, v in RESULT.items() if k != "floor"})
    rows = {r[0]: r[1:] for r in table_rows(partial)}
    assert rows["populate p50, 1 vCPU"] == ("250 µs", "", "")
    assert "round trip p50 (echo, 4 KiB read)" not in rows


def test_an_older_result_compares_populate_with_the_floor_section() -> None:
    rows = {r[0]: r[1:] for r in table_rows(_without_beside(RESULT))}
    assert rows["populate p50, 1 vCPU"] == ("250 µs", "100 µs", "2.50x")


def test_bad_command_lines_give_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["bench", "--only", "floor,nope"], ["bench", "--repeats", "0"]):
        with pytest.raises(SystemExit) as exc:
            xpemu_main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "error" in err


def test_json_into_a_missing_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert xpemu_main(["bench", "--only", "policy", "--json", str(tmp_path / "no/x.json")]) == 2
    assert "no directory" in capsys.readouterr().err


def test_recovered_seconds_reads_the_last_recovery_line(tmp_path: Path) -> None:
    log = tmp_path / "pager.log"
    log.write_text(
        '{"event": "pager.attached"}\n'
        '{"event": "pager.recovered", "seconds": 0.25}\n'
        "not json at all\n"
        '{"event": "pager.recovered", "seconds": 0.125}\n'
    )
    assert recovered_seconds(log) == 0.125
    assert recovered_seconds(tmp_path / "missing.log") is None


def test_pager_index_probe_counts_rows(tmp_path: Path) -> None:
    async def write() -> None:
        store = await PageStore.open(RealDisk(tmp_path), lock_wait=1)
        page = bytes(4096)
        slots = store.reserve(500)
        rows = [Row(g, g + 1, slots[g], checksum(g, g + 1, page)) for g in range(500)]
        await store.persist(rows, [page] * len(rows))
        await store.close()

    trio.run(write)
    probe = bench.probe_pager_index(str(tmp_path))
    assert probe["rows"] == 500
    assert probe["memory_per_row"] > 0 and probe["disk_per_row"] > 16


async def test_policy_section_runs_every_policy_on_the_same_trace() -> None:
    res = await run_bench(BenchOptions(only=("policy",), sizes=TINY), lambda s: None)
    for name, row in res["policy"]["traces"].items():
        assert 0 < row["belady"] <= min(row[p] for p in (*POLICIES, "lru"))
        assert row["clock_ratio"] == pytest.approx(row["clock"] / row["belady"])
        # A0 needs the probabilities: only the Zipf trace has them.
        assert ("a0" in row) == (name == "zipf")
    zipf = res["policy"]["traces"]["zipf"]
    assert zipf["belady"] <= zipf["a0"]
    assert res["policy"]["capacity"] == 64
    rows = {r[0] for r in table_rows(res)}
    assert {"zipf: online bound (A0)", "zipf: LRU (exact)", "hotset: car"} <= rows


async def test_process_sections_run_and_leave_no_child(tmp_path: Path) -> None:
    """A tiny run of the sections with real hv and pager processes (figures not judged)."""
    lines: list[str] = []
    opts = BenchOptions(
        only=("floor", "populate", "recovery", "memory"), sizes=TINY, work_dir=tmp_path
    )
    with trio.fail_after(90):
        res = await run_bench(opts, lines.append)
    assert res["populate"]["latency"]["p50_us"] > 0
    assert res["populate"]["latency"]["floor_p50_us"] > 0  # the echo between the populates
    assert res["populate"]["pageins_per_s_4vcpu"] > 0
    for mode in ("reattach", "xen"):  # both ring modes, each with its processes' CPU time
        row = res["populate"]["modes"][mode]["vcpus"][4]
        assert row["pageins_per_s"] > 0 and row["echo_per_s"] > 0
        assert min(row["cpu_us_hv"], row["cpu_us_pager"], row["cpu_us_guest"]) > 0
        assert row["echo_cpu_us_echo"] > 0 and row["echo_cpu_us_guest"] > 0
        # The relay floor beside the echo: four one-way messages, three processes' CPU.
        assert row["relay_per_s"] > 0
        assert min(row[f"relay_cpu_us_{p}"] for p in ("relay", "backend", "guest")) > 0
        lat = res["populate"]["modes"][mode]["latency"]
        assert 0 < lat["relay_p50_us"] <= lat["relay_p99_us"]
    rec = res["recovery"][300]
    assert len(rec["runs_s"]) == 1 and rec["start_to_first_served_s"] > 0
    assert rec["pager_recover_s"] > 0  # parsed from the new pager's own log
    assert rec["floor_start_s"] > 0
    assert 250 <= res["memory"]["pager"]["rows"] <= 301  # the store the recovery left
    assert res["memory"]["hv"]["rss_per_gfn"] > 0
    json.dumps(res, default=str)  # what --json writes
    assert "populate..." in lines
    assert not _running_children()  # every hv, pager, echo, relay and backend process is gone


async def test_a_work_dir_serves_a_second_run(tmp_path: Path) -> None:
    """`--work-dir` twice with the same directory: each run gets a new directory in it (the
    sections make fixed names; the second run used to die of FileExistsError)."""
    opts = BenchOptions(only=("recovery",), sizes=TINY, work_dir=tmp_path)
    with trio.fail_after(120):
        for _ in range(2):
            res = await run_bench(opts, lambda s: None)
            assert res["recovery"][300]["start_to_first_served_s"] > 0
    assert len(os.listdir(tmp_path)) == 2


def _running_children() -> list[int]:
    """Our child processes still alive (zombies excluded)."""
    out = []
    for pid in bench.children_of(os.getpid()):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] != "Z":
                    out.append(pid)
        except OSError:
            pass
    return out


def test_profile_summary_counts_self_and_inclusive_samples(tmp_path: Path) -> None:
    raw = tmp_path / "hv.txt"
    raw.write_text(
        "main (hv/__main__.py:10);serve (hv/server.py:20);send (trio/_socket.py:5) 3\n"
        "main (hv/__main__.py:10);serve (hv/server.py:20) 1\n"
    )
    text = bench.profile_summary(str(raw))
    assert "4 samples" in text
    assert " 75.0% send (trio/_socket.py)" in text  # self
    assert "100.0% serve (hv/server.py)" in text  # inclusive


def test_profile_summary_command_bad_input_one_line(tmp_path: Path) -> None:
    """`python -m stack.bench profile-summary` with a missing or damaged file, or --help:
    one line, no traceback (run as a process: its main configures logging globally)."""
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stack.bench", "profile-summary", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    missing = run(str(tmp_path / "missing.txt"))
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "missing.txt" in missing.stderr
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("frame (a.py:1) many\n")
    damaged = run(str(garbage))
    assert damaged.returncode == 1 and "not a py-spy raw profile" in damaged.stderr
    assert "Traceback" not in missing.stderr + damaged.stderr
    usage = run("--help")
    assert usage.returncode == 2 and usage.stderr.startswith("usage:")
