"""The report builder on plain data: what `ok` means and how the pager's lives are counted."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from stack.lives import LifeLog
from stack.options import StackOptions
from stack.report import FINAL_KILL, RunFacts, build_report, summary_text
from stack.supervisor import PagerLife, life_counts


def _guest(**over: Any) -> dict[str, Any]:
    g = {
        "ok": True,
        "ops": 1000,
        "stuck_vcpus": [],
        "integrity_errors": 0,
        "lost_gfns": [],
        "faults_seen": 12,
        "latency_ms": {"p50": 0.1, "p99": 2.0, "max": 5.0},
    }
    return g | over


def _facts(**over: Any) -> RunFacts:
    lives = [
        PagerLife(1, 101, 0.0, killed_by="kill", attached=True, rc=-signal.SIGKILL),
        PagerLife(
            2, 102, 1.0, spec="after_write@2", fault_kind="crash", attached=True, rc=-signal.SIGKILL
        ),
        PagerLife(3, 103, 2.0, killed_by=FINAL_KILL, attached=True, rc=-signal.SIGKILL),
        PagerLife(4, 104, 3.0, attached=True, rc=0),
    ]
    facts = RunFacts(
        opts=StackOptions(command="stress", seed=7, nr_gfns=256),
        run_dir=Path("/run/x"),
        lives=lives,
        final_n=4,
        counters={"page.evicted": 40, "page.prepped": 30, "page.populated": 5},
        last_epoch=4,
        guest=_guest(),
        guest_rc=0,
        check={"violations": []},
        dom={"paged_pages": 0, "paused_vcpus": []},
        final={"verified": 256, "integrity_errors": 0},
        paged_in=True,
        injected={"kill": 1, "crash": 1},
    )
    for k, v in over.items():
        setattr(facts, k, v)
    return facts


def test_a_clean_run_is_ok_and_counts_only_the_deaths_during_the_run() -> None:
    r = build_report(_facts())
    assert r["ok"] and r["violations"] == []
    p = r["pager"]
    assert (p["starts"], p["kills"], p["crash_points_fired"], p["pager_deaths"]) == (4, 1, 1, 2)
    assert p["restarts_survived"] == 2  # the end phase's own restart is not survived
    assert p["ends"] == {
        "sigkill:kill": 1,
        "crash_point": 1,
        f"sigkill:{FINAL_KILL}": 1,
        "exit:0": 1,
    }
    assert p["never_attached"] == 0 and p["lives"][1]["cause"] == "crash_point"
    assert r["pages"]["out"] == 40 and r["pages"]["in"] == 30 and r["pages"]["broken"] == 0
    assert r["config"]["target"] == 128 and r["logs"]["pager"] == "/run/x/pager.log"
    assert "PASSED" in summary_text(r | {"elapsed_s": 1.0})


def test_lives_folded_away_still_count_in_the_report() -> None:
    full = _facts()
    held: LifeLog[PagerLife] = LifeLog(lambda ls: life_counts(ls, full.final_n), keep=1)
    for life in full.lives:
        held.append(life)
    r, r_held = build_report(full), build_report(_facts(lives=held))
    assert len(r_held["pager"].pop("lives")) == 1 and len(r["pager"].pop("lives")) == 4
    assert r_held == r  # every count, the three folded lives included


def test_a_failed_guest_fails_the_run_without_touching_the_recorded_violations() -> None:
    recorded = ["store: 1 paged-out gfns have no copy: [3]"]
    r = build_report(
        _facts(guest=_guest(ok=False, aborted="boom"), guest_rc=3, violations=recorded)
    )
    assert not r["ok"]
    assert r["violations"] == [*recorded, "guest failed: boom", "guest exited with status 3"]
    assert recorded == ["store: 1 paged-out gfns have no copy: [3]"]  # pure: input unchanged
    assert "FAILED" in summary_text(r) and "violation: guest failed: boom" in summary_text(r)


def test_integrity_errors_of_the_guest_and_the_final_verify_add_up() -> None:
    r = build_report(
        _facts(
            guest=_guest(ok=False, integrity_errors=2),
            final={"verified": 256, "integrity_errors": 1},
        )
    )
    assert not r["ok"] and r["integrity_errors"] == 3
    assert r["violations"] == []  # integrity errors are their own failure, not a violation


def test_an_orphaned_ring_fails_and_its_paused_vcpus_count_as_stuck() -> None:
    r = build_report(
        _facts(
            orphaned=True,
            orphan_note="ring orphaned",
            dom={"paged_pages": 9, "paused_vcpus": [0, 2]},
        )
    )
    assert not r["ok"] and r["stuck_vcpus"] == [0, 2] and r["ring_orphaned"]
    assert "XEN RING MODE: ring orphaned" in summary_text(r)


def test_no_guest_report_is_a_failure() -> None:
    r = build_report(_facts(guest=None))
    assert not r["ok"] and r["faults_seen_by_guest"] is None and r["lost_gfns"] == 0


def test_power_faults_and_lost_gfns_are_reported_and_summarised() -> None:
    power = {
        "power_faults": 2,
        "harsh": 1,
        "unsynced_writes": 9,
        "writes_lost": 7,
        "writes_torn": 1,
        "meta_ops_lost": 2,
        "aimed": 1,
        "lies": 1,
        "lied_syncs": 4,
        "cuts": [],
    }
    r = build_report(_facts(guest=_guest(ok=False, lost_gfns=[9, 3]), power=power))
    assert not r["ok"] and r["lost_gfns"] == 2 and r["power"] is power
    text = summary_text(r)
    assert "power cuts 2 (1 harsh, 1 aimed at a write in flight): unsynced writes 9, lost 7" in text
    assert "torn 1" in text
    assert "lies 1 (4 syncs lied)" in text and "lost gfns (2): 3, 9" in text
    assert "power" not in build_report(_facts()) and "power cuts" not in summary_text(
        build_report(_facts())
    )


def test_gfns_xenpaging_lost_count_as_lost_and_its_kind_is_in_the_config() -> None:
    lost_msg = "5 gfns lost: still paged out after xenpaging's page-in"
    opts = StackOptions(command="stress", nr_gfns=256, pager_kind="xenpaging", ring_size=8)
    r = build_report(_facts(opts=opts, lost_by_pager=5, final=None, violations=[lost_msg]))
    assert not r["ok"] and r["lost_gfns"] == 5 and r["violations"] == [lost_msg]
    assert r["config"]["pager"] == "xenpaging" and r["config"]["ring_size"] == 8
    assert "lost gfns 5" in summary_text(r)
    # The larger of the two counts: the guest's own list when it saw more.
    r = build_report(_facts(guest=_guest(ok=False, lost_gfns=[1, 2, 3]), lost_by_pager=2))
    assert r["lost_gfns"] == 3 and r["config"]["pager"] == "xpemu"
