"""`xpemu status`: the `xl list` / `xentop` view of a running hv, from its `status` op."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from protocol import P2MType

#: Short column names for the p2m type counts.
_TYPE_ABBR = {
    "ram_rw": "rw",
    "paging_out": "out",
    "paged": "paged",
    "paging_in_start": "in_st",
    "paging_in": "in",
    "invalid": "inval",
    "mmio": "mmio",
    "broken": "broken",
}


def status_table(
    status: dict[str, Any], counters: dict[int, dict[str, int]] | None = None
) -> Table:
    """A rich table with one row per domain (and a caption with the host's frames)."""
    host = status.get("host", {})
    table = Table(
        title="xpemu domains",
        caption=f"host frames {host.get('frames', '?')}, free {host.get('free', '?')}",
    )
    table.add_column("dom", justify="right")
    table.add_column("gfns", justify="right")
    table.add_column("tot/target", justify="right")
    table.add_column("paged", justify="right")
    table.add_column("p2m types")
    table.add_column("ring")
    table.add_column("pager")
    table.add_column("paused")
    if counters:
        table.add_column("out/in", justify="right")
    for d in status.get("domains", []):
        ring = d["ring"]
        pager = d["pager"]
        who = "attached" if pager["attached"] else ("ORPHANED" if pager["orphaned"] else "none")
        types = " ".join(
            f"{_TYPE_ABBR[t.name]}={d['counts'].get(t.name, 0)}"
            for t in P2MType
            if d["counts"].get(t.name, 0)
        )
        row = [
            str(d["domid"]),
            str(d["nr_gfns"]),
            f"{d['tot_pages']}/{d['target']}",
            str(d["paged_pages"]),
            types,
            f"{ring['used']}/{ring['size']} w{ring['waiters']}",
            f"{who} e{pager['epoch']}",
            ",".join(map(str, d["paused_vcpus"])) or "-",
        ]
        if counters:
            c = counters.get(d["domid"], {})
            row.append(f"{c.get('page.evicted', 0)}/{c.get('page.prepped', 0)}")
        table.add_row(*row)
    return table


def status_lines(status: dict[str, Any]) -> list[str]:
    """The same view as plain text lines (for logs and non-terminals)."""
    host = status.get("host", {})
    lines = [f"host frames {host.get('frames')} free {host.get('free')}"]
    for d in status.get("domains", []):
        counts = " ".join(
            f"{_TYPE_ABBR[t.name]}={d['counts'].get(t.name, 0)}"
            for t in P2MType
            if d["counts"].get(t.name, 0)
        )
        pager = d["pager"]
        lines.append(
            f"dom{d['domid']}: gfns={d['nr_gfns']} tot_pages={d['tot_pages']} "
            f"target={d['target']} paged={d['paged_pages']} [{counts}] "
            f"ring={d['ring']['used']}/{d['ring']['size']} waiters={d['ring']['waiters']} "
            f"pager={'attached' if pager['attached'] else 'none'} epoch={pager['epoch']}"
            f"{' ORPHANED' if pager['orphaned'] else ''} "
            f"paused={d['paused_vcpus'] or '-'}"
        )
    return lines
