"""The bench's one table (figure, value, floor, ratio) and the summary of a profile."""

from __future__ import annotations

from typing import Any, Final

from pager.policy import POLICIES, policy_label

from .campaign import campaign_rows
from .lazyfs import lazyfs_rows
from .memory import MEMORY_GFNS
from .sim import sim_rows


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return ""
    return f"{a / b:.2f}x"


_POLICY_LABELS: Final = {
    "a0": "online bound (A0)",
    "lru": "LRU (exact)",
    "arc": "ARC (exact)",
    "lfu": "LFU (perfect)",
}
_KNOWN_ROWS: Final = {"belady", "a0", "lru", "arc", "lfu", *POLICIES}


def table_rows(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, floor, ratio) rows from `run_bench`'s result."""
    rows: list[tuple[str, str, str, str]] = []
    floor = res.get("floor")
    if floor:
        rows.append(
            ("round trip p50 (echo, 4 KiB read)", f"{floor['p50_us']:.0f} µs", "(the floor)", "")
        )
        rows.append(
            ("round trip p99 (echo, 4 KiB read)", f"{floor['p99_us']:.0f} µs", "(the floor)", "")
        )
    pop = res.get("populate")
    if pop and "modes" in pop:
        rows += _populate_rows(pop["modes"])
    elif pop:
        lat = pop["latency"]
        # The echo measured between the populates when there is one (results before it
        # had only the floor section's, measured minutes apart).
        beside = "floor_p50_us" in lat
        src, note = (lat, " (beside)") if beside else (floor or {}, "")
        for q in ("p50", "p99"):
            f = src.get(f"floor_{q}_us" if beside else f"{q}_us")
            rows.append(
                (
                    f"populate {q}, 1 vCPU",
                    f"{lat[f'{q}_us']:.0f} µs",
                    f"{f:.0f} µs{note}" if f else "",
                    _ratio(lat[f"{q}_us"], f),
                )
            )
        for v in sorted(
            int(k.removeprefix("pageins_per_s_").removesuffix("vcpu"))
            for k in pop
            if k.startswith("pageins_per_s_") and k.endswith("vcpu")
        ):
            key = f"pageins_per_s_{v}vcpu"
            ceiling = floor.get(f"per_s_{v}vcpu") if floor else None
            rows.append(
                (
                    f"page-ins/s, {v} vCPUs",
                    f"{pop[key]:.0f}/s",
                    f"{ceiling:.0f} echo/s, {v} callers" if ceiling else "",
                    _ratio(pop[key], ceiling),
                )
            )
    tput = res.get("throughput")
    if tput:
        for batch, row in tput["batches"].items():
            rows.append(
                (
                    f"page-out, batch {batch}",
                    f"{row['pageout_pps']:.0f} pages/s",
                    f"{row['floor_pps']:.0f} pages/s",
                    _ratio(row["pageout_pps"], row["floor_pps"]),
                )
            )
            rows.append(
                (
                    f"page-in, batch {batch}",
                    f"{row['pagein_pps']:.0f} pages/s",
                    f"{row['floor_pps']:.0f} pages/s",
                    _ratio(row["pagein_pps"], row["floor_pps"]),
                )
            )
    rec = res.get("recovery")
    if rec:
        for pages, r in rec.items():
            rows.append(
                (
                    f"recovery, {int(pages):,} pages out",
                    f"{r['start_to_first_served_s']:.3f} s",
                    f"{r['floor_start_s']:.3f} s (start+imports)" if "floor_start_s" in r else "",
                    _ratio(r["start_to_first_served_s"], r.get("floor_start_s")),
                )
            )
            rows.append(
                ("  of which the pager's recover()", f"{r['pager_recover_s']:.3f} s", "", "")
            )
    mem = res.get("memory")
    if mem:
        hv = mem["hv"]
        rows.append(
            (
                f"hv bytes/gfn, {MEMORY_GFNS:,} gfns (RSS)",
                f"{hv['rss_per_gfn']:.1f} B",
                "8 B (a Xen EPT entry)",
                _ratio(hv["rss_per_gfn"], 8),
            )
        )
        rows.append(
            (
                "hv bytes/gfn (tracemalloc)",
                f"{hv['traced_per_gfn']:.1f} B",
                "8 B",
                _ratio(hv["traced_per_gfn"], 8),
            )
        )
        if "pager" in mem:
            pg = mem["pager"]
            rows.append(
                (
                    f"pager index bytes/paged gfn, {pg.get('rows', 0):,} rows (memory)",
                    f"{pg['memory_per_row']:.1f} B",
                    "16 B (gen+slot+crc packed)",
                    _ratio(pg["memory_per_row"], 16),
                )
            )
            rows.append(
                (
                    "pager index bytes/paged gfn (disk)",
                    f"{pg['disk_per_row']:.0f} B",
                    "16 B",
                    _ratio(pg["disk_per_row"], 16),
                )
            )
    pol = res.get("policy")
    if pol:
        for trace, row in pol["traces"].items():
            rows.append(
                (f"{trace}: Belady's optimal", f"{row['belady']:.1f} faults/1k", "(the floor)", "")
            )
            extra = [k for k in row if not k.endswith("_ratio") and k not in _KNOWN_ROWS]
            for p in ("a0", "lfu", "lru", "arc", *POLICIES, *extra):
                if p in row:
                    rows.append(
                        (
                            f"{trace}: {_POLICY_LABELS.get(p, policy_label(p))}",
                            f"{row[p]:.1f} faults/1k",
                            f"{row['belady']:.1f} faults/1k",
                            f"{row[p + '_ratio']:.2f}x",
                        )
                    )
    return rows + lazyfs_rows(res) + sim_rows(res) + campaign_rows(res)


def _populate_rows(modes: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Each ring mode's populate latency, page-ins/s and CPU per page-in, each next to the
    echo measured beside it (same run, same number of callers), and, under each, the same
    figure next to the relay floor's (four one-way messages) when the result has it."""
    rows: list[tuple[str, str, str, str]] = []
    for mode, m in modes.items():
        lat = m["latency"]
        for q in ("p50", "p99"):
            f = lat[f"floor_{q}_us"]
            rows.append(
                (
                    f"populate {q}, 1 vCPU, {mode}",
                    f"{lat[f'{q}_us']:.0f} µs",
                    f"{f:.0f} µs (beside)",
                    _ratio(lat[f"{q}_us"], f),
                )
            )
            if f"relay_{q}_us" in lat:
                relay = lat[f"relay_{q}_us"]
                rows.append(
                    (
                        f"  vs relay {q} (4 messages)",
                        f"{lat[f'{q}_us']:.0f} µs",
                        f"{relay:.0f} µs relay = {_ratio(relay, f)} echo",
                        _ratio(lat[f"{q}_us"], relay),
                    )
                )
        for v, row in sorted(m["vcpus"].items(), key=lambda kv: int(kv[0])):
            callers = f"{v} caller{'s' if int(v) > 1 else ''}"
            rows.append(
                (
                    f"page-ins/s, {v} vCPU{'s' if int(v) > 1 else ''}, {mode}",
                    f"{row['pageins_per_s']:.0f}/s",
                    f"{row['echo_per_s']:.0f} echo/s, {callers}",
                    _ratio(row["pageins_per_s"], row["echo_per_s"]),
                )
            )
            if "relay_per_s" in row:
                relay = row["relay_per_s"]
                rows.append(
                    (
                        "  vs relay (4 messages)",
                        f"{row['pageins_per_s']:.0f}/s",
                        f"{relay:.0f} relay/s = {_ratio(relay, row['echo_per_s'])} echo",
                        _ratio(row["pageins_per_s"], relay),
                    )
                )
            hv, pager, guest = (row[f"cpu_us_{p}"] for p in ("hv", "pager", "guest"))
            echo, caller = row["echo_cpu_us_echo"], row["echo_cpu_us_guest"]
            rows.append(
                (
                    "  CPU/page-in (hv+pager+guest)",
                    f"{hv + pager + guest:.0f} µs ({hv:.0f}+{pager:.0f}+{guest:.0f})",
                    f"{echo + caller:.0f} µs/rt ({echo:.0f}+{caller:.0f})",
                    _ratio(hv + pager + guest, echo + caller),
                )
            )
            if "relay_per_s" in row:
                r, b, c = (row[f"relay_cpu_us_{p}"] for p in ("relay", "backend", "guest"))
                rows.append(
                    (
                        "  vs relay CPU/rt (relay+backend+caller)",
                        f"{hv + pager + guest:.0f} µs",
                        f"{r + b + c:.0f} µs/rt ({r:.0f}+{b:.0f}+{c:.0f})",
                        _ratio(hv + pager + guest, r + b + c),
                    )
                )
    return rows


def render_table(res: dict[str, Any]) -> str:
    """The one table: each figure, its floor from the same run, the ratio."""
    m = res["machine"]
    head = (
        f"xpemu bench ({res['mode']}, median of {res['repeats']} runs) on {m['cores']} cores,"
        f" Python {m['python']}, disk {m['disk']}, load average"
        f" {' '.join(f'{x:.2f}' for x in m['loadavg_start'])} at start,"
        f" {' '.join(f'{x:.2f}' for x in m.get('loadavg_end', m['loadavg_start']))} at end;"
        f" {res.get('total_s', 0):.0f} s"
    )
    rows = [("figure", "value", "floor (same run)", "ratio"), *table_rows(res)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [head]
    for j, r in enumerate(rows):
        lines.append(
            "  ".join(
                (c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])) for i, c in enumerate(r)
            ).rstrip()
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    pol = res.get("policy")
    if pol:
        lines.append(
            f"policy traces: {pol['accesses']:,} accesses over {pol['nr_gfns']:,} gfns,"
            f" memory of {pol['capacity']:,} frames, the same for every policy"
        )
    return "\n".join(lines)


def profile_summary(path: str, top: int = 15) -> str:
    """Where a py-spy raw profile (`--profile`) spends its samples: self and inclusive %."""
    import collections
    import re

    def short(frame: str) -> str:
        m = re.match(r"(.*) \((.*?):\d+\)$", frame)
        return f"{m.group(1)} ({'/'.join(m.group(2).split('/')[-2:])})" if m else frame

    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            frames = [short(fr) for fr in stack.split(";")]
            n = int(count)
            total += n
            own[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    out = [f"{path}: {total} samples", "  self:"]
    out += [f"  {100 * n / total:5.1f}% {fr}" for fr, n in own.most_common(top)]
    out.append("  inclusive:")
    out += [f"  {100 * n / total:5.1f}% {fr}" for fr, n in incl.most_common(2 * top)]
    return "\n".join(out)
