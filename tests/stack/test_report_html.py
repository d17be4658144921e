"""`xpemu report` on plain files: a run's logs onto one clock, a run cut short, a sim trace,
and what is not a run (one line, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from stack_helpers import one_line_error, run_xpemu

from stack.cli import main
from stack.report_html import render, replay_argv, replay_command
from stack.timeline import NotARun, fault_label, load, rates


def _ts(t: float) -> str:
    s = 30 + t
    return f"2026-12-06T03:32:{s:09.6f}Z"


def _write(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(rec) + "\n" for rec in lines))


def _run_dir(tmp_path: Path, *, with_report: bool) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    _write(
        d / "xpemu.log",
        [
            {"event": "child.started", "child": "hv", "timestamp": _ts(0.0)},
            {"event": "child.started", "child": "pager", "start": 1, "timestamp": _ts(0.1)},
            *(
                {
                    "event": "stack.sample",
                    "tot_pages": 100 - i,
                    "target": 90,
                    "paged": i,
                    "out": 10 * i,
                    "in_": 5 * i,
                    "timestamp": _ts(0.5 * i),
                }
                for i in range(1, 9)
            ),
            {
                "event": "stack.fault",
                "fault": "kill",
                "outcome": "killed",
                "held_s": 0.4,
                "timestamp": _ts(1.0),
            },
            {
                "event": "stack.pager_exited",
                "n": 1,
                "cause": "sigkill:kill",
                "timestamp": _ts(1.01),
            },
            {"event": "child.started", "child": "pager", "start": 2, "timestamp": _ts(1.1)},
            {"event": "stack.fault", "fault": "crash", "point": "after_write", "timestamp": _ts(2)},
            {
                "event": "stack.fault",
                "fault": "store",
                "op": "commit",
                "action": "EIO",
                "timestamp": _ts(3.0),
            },
        ],
    )
    _write(
        d / "hv.log",
        [
            {"event": "pager.attached", "epoch": 1, "timestamp": _ts(0.2)},
            {"event": "vcpu.resumed", "vcpu": 1, "paused_s": 0.25, "timestamp": _ts(1.5)},
            {"event": "vcpu.resumed", "vcpu": 0, "paused_s": 0.5, "timestamp": _ts(2.5)},
            {"event": "pager.attached", "epoch": 2, "timestamp": _ts(1.3)},
        ],
    )
    (d / "guest.log").write_text(
        json.dumps(
            {
                "event": "guest.progress",
                "ops": 10,
                "latency_ms": {"p50": 1, "p99": 9, "max": 20},
                "timestamp": _ts(1.0),
            }
        )
        + "\n"
        + '{"event": "guest.progress", "ops": 2'  # the last line cut by a kill
    )
    if with_report:
        report = {
            "ok": True,
            "command": "stress",
            "seed": 5,
            "config": {"vcpus": 2},
            "replay": "xpemu stress --seed 5 --duration 8",
            "faults_injected": {"kill": 1, "crash": 1, "store": 1},
            "vcpus": [{"vcpu": 0, "pauses": 3, "paused_s": 0.7, "longest_s": 0.5}],
            "populate_hist_ms": [[1.0, 1.58, 4], [100.0, 158.0, 1]],
            "guest": {"latency_hist_ms": [[0.5, 0.8, 7]]},
        }
        (d / "report.json").write_text(json.dumps(report))
    return d


def test_a_run_on_one_clock_from_its_logs(tmp_path: Path) -> None:
    tl = load(_run_dir(tmp_path, with_report=True))
    assert tl.clock == "wall" and not tl.incomplete
    assert [(f["t"], f["label"]) for f in tl.faults] == [
        (pytest.approx(1.0), "kill"),
        (pytest.approx(2.0), "crash after_write"),
        (pytest.approx(3.0), "store commit=EIO"),
    ]
    assert tl.faults[0]["outcome"] == "killed (held 0.4 s for a pager to kill)"
    assert [d["cause"] for d in tl.deaths] == ["sigkill:kill"]
    assert [s["n"] for s in tl.starts] == [1, 2]
    assert [a["epoch"] for a in tl.attaches] == [1, 2]  # in time order, across files
    assert [(p["vcpu"], p["start"], p["end"]) for p in tl.pauses] == [
        (1, pytest.approx(1.25), pytest.approx(1.5)),
        (0, pytest.approx(2.0), pytest.approx(2.5)),
    ]
    assert len(tl.samples) == 8 and tl.progress[0]["p99"] == 9
    assert tl.problems == ["guest.log:2: not JSON (a line cut short?)"]
    ts, outs = rates(tl.samples, "out")
    assert outs == [pytest.approx(20.0)] * 7 and ts[0] == pytest.approx(1.0)


def test_the_page_has_every_fault_pause_and_the_replay_command(tmp_path: Path) -> None:
    page = render(load(_run_dir(tmp_path, with_report=True)))
    assert "https://" not in page.split("<body>", 1)[1].split("<script", 1)[0]
    assert page.count('"type":"line"') == 3  # one marker line per fault
    for label in ("kill", "crash after_write", "store commit=EIO"):
        assert f'"text":"{label}"' in page
    assert "xpemu stress --seed 5 --duration 8" in page and "PASSED" in page
    assert 'id="incomplete"' not in page
    assert page.count("<tr><td>vCPU") == 2  # the table of pauses, longest first
    assert page.index("<td>vCPU 0</td>") < page.index("<td>vCPU 1</td>")
    for name in ("pager deaths", "pager (re)started", "pager attached (epoch)"):
        assert f'"name":"{name}"' in page


def test_a_run_cut_short_is_drawn_and_marked_incomplete(tmp_path: Path, capsys: Any) -> None:
    run = _run_dir(tmp_path, with_report=False)
    out = tmp_path / "r.html"
    assert main(["report", str(run), "-o", str(out)]) == 0
    assert "INCOMPLETE" in capsys.readouterr().out
    page = out.read_text()
    assert 'id="incomplete"' in page and page.count('"type":"line"') == 3


async def test_not_a_run_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    for target in (tmp_path, tmp_path / "notes.txt", tmp_path / "missing"):
        result = await run_xpemu(["report", str(target)], bound=60)
        assert result.returncode == 2
        assert str(target) in one_line_error(result)
    with pytest.raises(NotARun):
        load(tmp_path)


def test_a_sim_trace_renders_on_simulated_time(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    _write(
        trace,
        [
            {"t": -1.0, "c": "sim", "e": "start", "seed": 3},
            {"t": 0.5, "c": "pager", "e": "start", "life": 1, "spec": None},
            {"t": 1.25, "c": "sim", "e": "fault", "kind": "crash", "point": "after_write"},
            {"t": 1.5, "c": "pager", "e": "end", "life": 1, "outcome": "crash_point"},
            {"t": 2.0, "c": "hv", "e": "vcpu.resumed", "vcpu": 0, "paused_s": 0.5},
            {"t": 3.0, "c": "sim", "e": "fault", "kind": "power", "mode": "harsh"},
        ],
    )
    tl = load(trace)
    assert tl.clock == "sim" and not tl.incomplete
    assert [(f["t"], f["label"]) for f in tl.faults] == [
        (1.25, "crash after_write"),
        (3.0, "power harsh"),
    ]
    assert [d["cause"] for d in tl.deaths] == ["crash_point"] and tl.starts[0]["n"] == 1
    assert tl.pauses == [{"vcpu": 0, "start": 1.5, "end": 2.0, "s": 0.5}]
    page = render(tl)
    assert "simulated s" in page and page.count('"type":"line"') == 2
    assert tl.seed == 3 and "<h1>xpemu sim trace seed 3</h1>" in page


def test_replay_command_without_the_runs_own() -> None:
    report = {
        "command": "stress",
        "seed": 7,
        "config": {"vcpus": 2, "policy": None},
        "schedule": [{}, {}],
    }
    assert replay_command(report) == "xpemu stress --seed 7 --vcpus 2 --faults 2"


def test_replay_argv_drops_where_the_run_wrote() -> None:
    argv = [
        "stress",
        "--run-dir",
        "/tmp/x",
        "--duration",
        "5",
        "--report-html=r.html",
        "--report",
        "r.json",
        "--kinds",
        "kill=1",
    ]
    assert replay_argv(argv, 9) == "xpemu stress --duration 5 --kinds kill=1 --seed 9"
    assert replay_argv(["up", "--seed", "3"], 3) == "xpemu up --seed 3"


def test_a_rotated_log_is_read_oldest_first_and_said(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, with_report=True)
    log = run / "xpemu.log"
    lines = log.read_text().splitlines(keepends=True)
    (run / "xpemu.log.1").write_text("".join(lines[:5]))
    log.write_text("".join(lines[5:]))
    tl = load(run)
    assert len(tl.faults) == 3 and len(tl.samples) == 8
    assert "xpemu.log.1: the log was rotated; anything older is gone" in tl.problems


async def test_a_real_sim_trace_renders_every_fault(tmp_path: Path) -> None:
    trace, page = tmp_path / "t.jsonl", tmp_path / "t.html"
    sim = await run_xpemu(["sim", "--seed", "3", "--trace", str(trace)], bound=120)
    assert sim.returncode == 0, sim.stdout.decode() + sim.stderr.decode()
    recs = [json.loads(ln) for ln in trace.read_text().splitlines()]
    fired = [r for r in recs if (r["c"], r["e"]) == ("sim", "fault")]
    assert fired
    result = await run_xpemu(["report", str(trace), "-o", str(page)], bound=60)
    assert result.returncode == 0, result.stderr.decode()
    assert f"{len(fired)} faults" in result.stdout.decode()
    assert page.read_text().count('"type":"line"') == len(fired)


def test_fault_labels_name_what_each_kind_aimed_at() -> None:
    assert fault_label({"fault": "kill"}) == "kill"
    assert fault_label({"fault": "cut", "direction": "to_hv"}) == "cut to_hv"
    assert fault_label({"fault": "power", "harsh": True, "seed": 4}) == "power harsh"
    assert fault_label({"fault": "power", "harsh": False, "seed": 4}) == "power"
    assert fault_label({"fault": "lie", "for": 2.5}) == "lie 2.5 s"
