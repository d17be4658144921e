"""`xpemu status`: the `xl list` / `xentop` view of a running hv, from its `status` op.

Per domain: pages, p2m types, ring use, the pager's epoch and uptime, page-outs and
page-ins per second (between two looks, under `--watch`); per vCPU: paused now, pauses,
and the time spent paused in all and at the longest.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
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


def rates_between(
    before: dict[int, dict[str, int]], after: dict[int, dict[str, int]], seconds: float
) -> dict[int, tuple[float, float]]:
    """Page-outs and page-ins per second of each domain between two counter readings."""
    out: dict[int, tuple[float, float]] = {}
    if seconds <= 0:
        return out
    for domid, c in after.items():
        b = before.get(domid, {})
        out[domid] = (
            max(0, c.get("page.evicted", 0) - b.get("page.evicted", 0)) / seconds,
            max(0, c.get("page.prepped", 0) - b.get("page.prepped", 0)) / seconds,
        )
    return out


def status_table(
    status: dict[str, Any],
    counters: dict[int, dict[str, int]] | None = None,
    rates: dict[int, tuple[float, float]] | None = None,
) -> Any:
    """Rich tables: one row per domain (a caption with the host's frames), then its vCPUs."""
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
    if rates is not None:
        table.add_column("out/s in/s", justify="right")
    vcpus = Table(title="vCPUs")
    for name in ("dom", "vcpu", "paused", "pauses", "blocked s", "longest ms"):
        vcpus.add_column(name, justify="right")
    for d in status.get("domains", []):
        ring = d["ring"]
        pager = d["pager"]
        who = "attached" if pager["attached"] else ("ORPHANED" if pager["orphaned"] else "none")
        up = f" up {pager.get('uptime_s', 0):.1f}s" if pager["attached"] else ""
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
            f"{who} e{pager['epoch']}{up}",
            ",".join(map(str, d["paused_vcpus"])) or "-",
        ]
        if counters:
            c = counters.get(d["domid"], {})
            row.append(f"{c.get('page.evicted', 0)}/{c.get('page.prepped', 0)}")
        if rates is not None:
            r_out, r_in = rates.get(d["domid"], (0.0, 0.0))
            row.append(f"{r_out:.0f} {r_in:.0f}")
        table.add_row(*row)
        for v in d.get("vcpu_stats", []):
            vcpus.add_row(
                str(d["domid"]),
                str(v["vcpu"]),
                "PAUSED" if v["paused"] else "-",
                str(v["pauses"]),
                f"{v['paused_s']:.3f}",
                f"{v['longest_s'] * 1e3:.1f}",
            )
    return Group(table, vcpus) if vcpus.row_count else table


def status_lines(
    status: dict[str, Any], rates: dict[int, tuple[float, float]] | None = None
) -> list[str]:
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
            + (f" uptime={pager.get('uptime_s', 0):.1f}s" if pager["attached"] else "")
            + (
                " out/s={:.0f} in/s={:.0f}".format(*rates[d["domid"]])
                if rates and d["domid"] in rates
                else ""
            )
        )
        for v in d.get("vcpu_stats", []):
            lines.append(
                f"  vcpu{v['vcpu']}: paused={'yes' if v['paused'] else 'no'} "
                f"pauses={v['pauses']} blocked={v['paused_s']:.3f}s "
                f"longest={v['longest_s'] * 1e3:.1f}ms"
            )
    return lines
