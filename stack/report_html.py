"""`xpemu report`: one self-contained HTML page of a run's timeline, pauses and latencies.

Plotly draws the figures (zoom and pan on a long timeline; plotly.min.js from the plotly
wheel is inlined, so the page opens with no network). The page has, in order: the verdict
and the replay command; the timeline (tot_pages, target and paged pages; page-outs and
page-ins per second; the guest's latency per interval; each vCPU's paused intervals), every
injected fault a labelled vertical line across it, pager deaths and attaches (epochs) as
markers; the pauses longest first; the latency histograms (log scale); the run's report.
"""

from __future__ import annotations

import html
import json
import shlex
from pathlib import Path
from typing import Any, Final

from .timeline import Timeline, rates

#: Rows of the table of pauses, longest first.
MAX_PAUSE_ROWS: Final = 50

#: A colour per fault kind (the marker lines); other kinds are grey.
FAULT_COLOURS: Final = {
    "kill": "#d62728",
    "crash": "#ff7f0e",
    "cut": "#9467bd",
    "store": "#8c564b",
    "power": "#e377c2",
    "lie": "#17becf",
}


def write_report(tl: Timeline, out: Path) -> None:
    """Write the page for `tl` to `out` (OSError if it cannot be written)."""
    out.write_text(render(tl))


def render(tl: Timeline) -> str:
    """The whole page as one string."""
    import plotly.io as pio

    unit = "simulated s" if tl.clock == "sim" else "s"
    figs = [
        ("timeline", timeline_figure(tl, unit)),
        ("histograms", histogram_figure(tl)),
    ]
    parts = [
        pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=(i == 0),  # inlined once, first
            div_id=name,
            config={"displaylogo": False, "responsive": True},
        )
        for i, (name, fig) in enumerate(figs)
    ]
    return _PAGE.format(
        title=html.escape(_title(tl)),
        head=_head(tl),
        timeline=parts[0],
        pauses=_pause_table(tl),
        histograms=parts[1],
        report=_report_table(tl),
    )


def _title(tl: Timeline) -> str:
    r = tl.report or {}
    what = f"xpemu {r.get('command', 'run')}" if tl.clock == "wall" else "xpemu sim trace"
    seed = r.get("seed", tl.seed)
    return f"{what} seed {seed}" if seed is not None else f"{what}: {tl.source}"


def _head(tl: Timeline) -> str:
    r = tl.report
    rows = [f"<p>source: <code>{html.escape(tl.source)}</code></p>"]
    if tl.incomplete:
        rows.append(
            '<p class="incomplete" id="incomplete">INCOMPLETE: the run wrote no report '
            "(cut short); what its logs hold is shown.</p>"
        )
    if tl.clock == "sim":
        rows.append("<p>Times are simulated seconds (sim trace).</p>")
    if r:
        verdict = "PASSED" if r.get("ok") else "FAILED"
        rows.append(f'<p class="verdict {verdict.lower()}" id="verdict">{verdict}</p>')
        rows.append(f'<p>replay: <code id="replay">{html.escape(replay_command(r))}</code></p>')
    if tl.problems:
        shown = "; ".join(tl.problems[:5])
        rows.append(f"<p>unreadable lines: {len(tl.problems)} ({html.escape(shown)})</p>")
    return "\n".join(rows)


#: Options that name where a run writes, not what it does (left out of the replay command).
_NOT_REPLAYED: Final = ("--run-dir", "--report", "--report-html")


def replay_argv(argv: list[str], seed: int) -> str:
    """A run's command line (`argv` after `xpemu`) less where it wrote, with its seed."""
    out, skip = ["xpemu"], False
    for a in argv:
        if skip:
            skip = False
        elif a in _NOT_REPLAYED:
            skip = True
        elif not a.startswith(tuple(f"{o}=" for o in _NOT_REPLAYED)):
            out.append(a)
    if not any(a == "--seed" or a.startswith("--seed=") for a in out):
        out += ["--seed", str(seed)]
    return shlex.join(out)


def replay_command(report: dict[str, Any]) -> str:
    """The command line that runs the same schedule and workload again: the run's own
    (`replay`, set by the command line) or one made from its options."""
    if report.get("replay"):
        return str(report["replay"])
    c = report.get("config", {})
    argv = ["xpemu", str(report.get("command", "stress")), "--seed", str(report.get("seed", 0))]
    for flag, key in (
        ("--nr-gfns", "nr_gfns"),
        ("--target", "target"),
        ("--vcpus", "vcpus"),
        ("--ring-size", "ring_size"),
        ("--ring-mode", "ring_mode"),
        ("--pattern", "pattern"),
        ("--duration", "duration"),
        ("--policy", "policy"),
    ):
        if c.get(key) is not None:
            argv += [flag, str(c[key])]
    if report.get("command") == "stress" and report.get("schedule") is not None:
        argv += ["--faults", str(len(report["schedule"]))]  # kinds' weights are not kept
    return shlex.join(argv)


def timeline_figure(tl: Timeline, unit: str) -> Any:
    """Four rows on one time axis, the faults as labelled lines across all of them."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=4,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.04,
        row_heights=[0.28, 0.22, 0.22, 0.28],
        subplot_titles=(
            "pages of domain 1",
            "page-outs and page-ins per second",
            "guest access latency per interval (ms)",
            "vCPU paused intervals",
        ),
    )
    s = tl.samples
    ts = [x["t"] for x in s]
    for key, name in (("tot_pages", "tot_pages"), ("target", "target"), ("paged", "paged")):
        fig.add_trace(go.Scatter(x=ts, y=[x[key] for x in s], name=name, mode="lines"), 1, 1)
    for key, name in (("out", "page-outs/s"), ("in_", "page-ins/s")):
        rx, ry = rates(s, key)
        fig.add_trace(go.Scatter(x=rx, y=ry, name=name, mode="lines"), 2, 1)
    p = [x for x in tl.progress if x.get("max") is not None]
    for key in ("p50", "p99", "max"):
        fig.add_trace(
            go.Scatter(  # no accesses in an interval: a gap, not a zero on a log axis
                x=[x["t"] for x in p],
                y=[x[key] or None for x in p],
                name=f"latency {key}",
            ),
            3,
            1,
        )
    fig.update_yaxes(type="log", row=3, col=1)
    _pause_rows(fig, tl)
    top = max([x["tot_pages"] or 0 for x in s] + [x["paged"] or 0 for x in s] + [1])
    if tl.deaths:
        fig.add_trace(
            go.Scatter(
                x=[d["t"] for d in tl.deaths],
                y=[top] * len(tl.deaths),
                mode="markers",
                marker={"symbol": "x", "size": 10, "color": "black"},
                name="pager deaths",
                text=[f"pager {d['n']} ended: {d['cause']}" for d in tl.deaths],
            ),
            1,
            1,
        )
    if tl.starts:
        fig.add_trace(
            go.Scatter(
                x=[st["t"] for st in tl.starts],
                y=[top * 0.95] * len(tl.starts),
                mode="markers",
                marker={"symbol": "circle-open", "size": 8, "color": "grey"},
                name="pager (re)started",
                text=[f"pager {st['n']} started" for st in tl.starts],
            ),
            1,
            1,
        )
    if tl.attaches:
        fig.add_trace(
            go.Scatter(
                x=[a["t"] for a in tl.attaches],
                y=[top * 0.9] * len(tl.attaches),
                mode="markers+text",
                marker={"symbol": "triangle-up", "size": 9, "color": "green"},
                text=[f"e{a['epoch']}" for a in tl.attaches],
                textposition="top center",
                name="pager attached (epoch)",
            ),
            1,
            1,
        )
    for i, f in enumerate(tl.faults):
        colour = FAULT_COLOURS.get(str(f["kind"]), "#7f7f7f")
        fig.add_shape(
            type="line",
            x0=f["t"],
            x1=f["t"],
            y0=0,
            y1=1,
            xref="x",
            yref="paper",
            line={"color": colour, "width": 1.5, "dash": "dot"},
            name=f"fault {i}",
        )
        fig.add_annotation(
            x=f["t"],
            y=1.0 - 0.035 * (i % 4),
            xref="x",
            yref="paper",
            text=html.escape(f["label"]),
            hovertext=html.escape(f"{f['label']} at {f['t']:.3f}{unit}: {f.get('outcome')}"),
            showarrow=False,
            font={"size": 10, "color": colour},
            bgcolor="rgba(255,255,255,0.8)",
            name=f"fault {i}",
        )
    fig.update_xaxes(title_text=f"time ({unit})", row=4, col=1)
    fig.update_xaxes(range=[0, max(tl.end * 1.02, 1e-3)])
    fig.update_layout(height=1000, margin={"t": 60, "l": 60, "r": 20, "b": 40}, hovermode="x")
    return fig


def _pause_rows(fig: Any, tl: Timeline) -> None:
    """One row per vCPU: a bar from each pause's start to its end."""
    import plotly.graph_objects as go

    vcpus = sorted({p["vcpu"] for p in tl.pauses if p["vcpu"] is not None})
    for v in vcpus:
        mine = [p for p in tl.pauses if p["vcpu"] == v]
        fig.add_trace(
            go.Bar(
                base=[p["start"] for p in mine],
                x=[p["s"] for p in mine],
                y=[f"vCPU {v}"] * len(mine),
                orientation="h",
                name=f"vCPU {v} paused",
                hovertext=[f"{p['s'] * 1e3:.1f} ms from {p['start']:.3f}" for p in mine],
                showlegend=False,
            ),
            4,
            1,
        )


def histogram_figure(tl: Timeline) -> Any:
    """The guest's access latencies and hv's populate round trips, counts on log axes."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("guest access latency (ms)", "populate round trip (ms)"),
    )
    r = tl.report or {}
    series = (
        ((tl.guest or r.get("guest") or {}).get("latency_hist_ms") or [], "guest accesses"),
        (r.get("populate_hist_ms") or [], "populate round trips"),
    )
    for col, (bins, name) in enumerate(series, 1):
        fig.add_trace(
            go.Bar(
                x=[(lo * hi) ** 0.5 for lo, hi, _ in bins],
                y=[n for _, _, n in bins],
                width=[hi - lo for lo, hi, _ in bins],
                name=name,
                hovertext=[f"{lo:.3g}-{hi:.3g} ms: {n}" for lo, hi, n in bins],
            ),
            1,
            col,
        )
        fig.update_xaxes(type="log", title_text="ms", row=1, col=col)
        fig.update_yaxes(type="log", title_text="count", row=1, col=col)
    fig.update_layout(height=380, showlegend=False, margin={"t": 40, "l": 60, "r": 20, "b": 40})
    return fig


def _pause_table(tl: Timeline) -> str:
    rows = sorted(tl.pauses, key=lambda p: -p["s"])[:MAX_PAUSE_ROWS]
    body = "".join(
        f"<tr><td>vCPU {p['vcpu']}</td><td>{p['start']:.3f}</td><td>{p['s'] * 1e3:.1f}</td></tr>"
        for p in rows
    )
    totals = ""
    vcpus = (tl.report or {}).get("vcpus") or []
    if vcpus:
        totals = (
            "<p>hv's counts, every pause: "
            + ", ".join(
                f"vCPU {v['vcpu']}: {v['pauses']} pauses, {v['paused_s']:.3f} s in all, "
                f"longest {v['longest_s'] * 1e3:.1f} ms"
                for v in vcpus
            )
            + "</p>"
        )
    return (
        f"{totals}<p>{len(tl.pauses)} pauses of 1 ms or more; the {len(rows)} longest:</p>"
        '<table id="pauses"><tr><th>vCPU</th><th>from (s)</th><th>paused (ms)</th></tr>'
        f"{body}</table>"
    )


def _report_table(tl: Timeline) -> str:
    r = tl.report
    if r is None:
        return "<p>No report: the run ended before writing one.</p>"
    keys = (
        "ok",
        "seed",
        "command",
        "elapsed_s",
        "faults_injected",
        "integrity_errors",
        "lost_gfns",
        "stuck_vcpus",
        "latency_ms",
        "populate_ms",
        "config",
        "pager",
        "pages",
        "violations",
    )
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td><pre>{html.escape(_short(r.get(k)))}</pre></td></tr>"
        for k in keys
        if k in r
    )
    return f'<table id="report">{rows}</table>'


def _short(value: Any) -> str:
    if isinstance(value, dict) and "lives" in value:
        value = {k: v for k, v in value.items() if k != "lives"}
    if isinstance(value, dict) and "counters" in value:
        value = {k: v for k, v in value.items() if k != "counters"}
    return json.dumps(value, default=str) if not isinstance(value, str) else value


_PAGE: Final = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1em 2em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 2px 6px; }}
th {{ text-align: left; vertical-align: top; }} pre {{ margin: 0; white-space: pre-wrap; }}
.passed {{ color: green; font-weight: bold; }} .failed {{ color: #c00; font-weight: bold; }}
.incomplete {{ background: #fd0; padding: 4px; font-weight: bold; }}
</style></head><body>
<h1>{title}</h1>
{head}
<h2>Timeline</h2>
{timeline}
<h2>vCPU pauses, longest first</h2>
{pauses}
<h2>Latency histograms</h2>
{histograms}
<h2>Run report</h2>
{report}
</body></html>
"""
