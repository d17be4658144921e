"""The live view of a running stack: a rich panel on a terminal, plain lines otherwise."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio


@dataclass
class LiveFacts:
    """What the live view shows, taken from the harness at one instant."""

    command: str
    phase: str
    elapsed: float
    dom: dict[str, Any] = field(default_factory=dict)  # hv's status of domain 1
    counters: dict[str, int] = field(default_factory=dict)
    guest: dict[str, Any] = field(default_factory=dict)  # the guest's latest progress line
    restarts: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    scheduled: int = 0  # faults in the schedule
    orphan_note: str | None = None


async def display(facts: Callable[[], LiveFacts], live: bool, out: Callable[[str], None]) -> None:
    """Live progress until cancelled: a panel redrawn twice a second, or a line every 5 s."""
    if live:
        from rich.live import Live

        with Live(panel(facts()), refresh_per_second=4, transient=True) as view:
            while True:
                await trio.sleep(0.5)
                view.update(panel(facts()))
    else:
        # One early line (the run is alive), then one every few seconds.
        await trio.sleep(1.0)
        while True:
            out(line(facts()))
            await trio.sleep(5.0)


def line(f: LiveFacts) -> str:
    """One plain progress line."""
    dom, g, c = f.dom, f.guest, f.counters
    pager = dom.get("pager", {})
    return (
        f"[{f.elapsed:6.1f}s {f.phase}] tot_pages={dom.get('tot_pages')} "
        f"target={dom.get('target')} paged={dom.get('paged_pages')} "
        f"ring={dom.get('ring', {}).get('used')} paused={dom.get('paused_vcpus')} "
        f"pager={'up' if pager.get('attached') else 'DOWN'} epoch={pager.get('epoch')} "
        f"restarts={f.restarts} faults={sum(f.injected.values())} "
        f"out/in={c.get('page.evicted', 0)}/{c.get('page.prepped', 0)} "
        f"guest ops={g.get('ops', 0)} slow={g.get('faults_seen', 0)} "
        f"errors={g.get('integrity_errors', 0)} stuck={g.get('stuck_vcpus', 0)}"
    )


def panel(f: LiveFacts) -> Any:
    """The live view: a compact two-column table that fits an 80-column terminal."""
    from rich.table import Table

    dom, g, c = f.dom, f.guest, f.counters
    pager = dom.get("pager", {})
    ring = dom.get("ring", {})
    t = Table(
        title=f"xpemu {f.command}  {f.elapsed:.1f}s  {f.phase}",
        show_header=False,
        expand=False,
    )
    t.add_column(style="bold")
    t.add_column()
    t.add_row(
        "domain 1",
        f"tot_pages {dom.get('tot_pages')} / target {dom.get('target')}, "
        f"paged {dom.get('paged_pages')}",
    )
    t.add_row(
        "ring",
        f"{ring.get('used')}/{ring.get('size')} used, {ring.get('waiters')} waiting; "
        f"paused vCPUs {dom.get('paused_vcpus') or '-'}",
    )
    state = "attached" if pager.get("attached") else "DOWN"
    if pager.get("orphaned"):
        state = "ORPHANED (xen mode)"
    t.add_row("pager", f"{state}, epoch {pager.get('epoch')}, restarts {f.restarts}")
    t.add_row(
        "pages",
        f"out {c.get('page.evicted', 0)}, in {c.get('page.prepped', 0)}, "
        f"guest populates {c.get('page.populated', 0)}",
    )
    t.add_row(
        "guest",
        f"ops {g.get('ops', 0)}, slow {g.get('faults_seen', 0)}, "
        f"errors {g.get('integrity_errors', 0)}, stuck {g.get('stuck_vcpus', 0)}",
    )
    if f.scheduled:
        t.add_row(
            "faults",
            f"{sum(f.injected.values())}/{f.scheduled} "
            + (", ".join(f"{k} {n}" for k, n in sorted(f.injected.items())) or ""),
        )
    if f.orphan_note:
        t.add_row("XEN", f"[bold red]{f.orphan_note}[/]")
    return t
