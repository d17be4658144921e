"""The live view from plain facts: the progress line and the panel say what hv reported."""

from __future__ import annotations

import io

from rich.console import Console

from stack.live import LiveFacts, line, panel


def _facts(**over: object) -> LiveFacts:
    facts = LiveFacts(
        command="stress",
        phase="workload",
        elapsed=12.5,
        dom={
            "tot_pages": 100,
            "target": 128,
            "paged_pages": 28,
            "ring": {"used": 3, "size": 64, "waiters": 0},
            "paused_vcpus": [1],
            "pager": {"attached": True, "epoch": 4, "orphaned": False},
        },
        counters={"page.evicted": 40, "page.prepped": 30, "page.populated": 5},
        guest={"ops": 900, "faults_seen": 7},
        restarts=3,
        injected={"kill": 2, "crash": 1},
        scheduled=5,
    )
    for k, v in over.items():
        setattr(facts, k, v)
    return facts


def test_the_progress_line() -> None:
    text = line(_facts())
    assert text.startswith("[  12.5s workload] tot_pages=100 target=128 paged=28 ring=3")
    assert "pager=up epoch=4 restarts=3 faults=3 out/in=40/30 guest ops=900 slow=7" in text
    assert "pager=DOWN" in line(_facts(dom={}))  # before hv's first status


def test_the_panel() -> None:
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(panel(_facts(orphan_note="ring orphaned")))
    text = console.export_text()
    assert "xpemu stress  12.5s  workload" in text
    assert "attached, epoch 4, restarts 3" in text
    assert "3/5 crash 1, kill 2" in text and "ring orphaned" in text
