"""The HTML report of a real stress run, opened in headless Chromium (Debian's `chromium`).

The browser loads the page from a file with every network feature off, runs its scripts,
and gives back the drawn DOM and its console; the test checks that nothing was logged to
the console and that the timeline, the vCPU rows and the histograms are drawn with the
run's data (one marker line per injected fault). A screenshot is saved in the test's
temporary directory (docs/report.png is one of them).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import trio
from stack_helpers import run_xpemu

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)"
)

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",  # let the scripts finish drawing before the dump
    "--enable-logging=stderr",
    "--v=0",
)


async def browse(page: Path, tmp: Path, shot: Path | None = None) -> tuple[str, list[str]]:
    """Open `page` in a fresh headless Chromium: the DOM after its scripts ran, and the
    console lines it logged (a screenshot to `shot` too, when given)."""
    assert CHROMIUM is not None
    profile = tmp / f"chromium-{page.stem}"
    base = [CHROMIUM, *_FLAGS, f"--user-data-dir={profile}"]
    with trio.fail_after(180):
        dump = await trio.run_process(
            [*base, "--dump-dom", page.as_uri()],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        if shot is not None:
            await trio.run_process(
                [*base, "--window-size=1400,1900", f"--screenshot={shot}", page.as_uri()],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    assert dump.returncode == 0, dump.stderr.decode()[-2000:]
    console = [ln for ln in dump.stderr.decode().splitlines() if ":CONSOLE" in ln]
    return dump.stdout.decode(), console


def _div(dom: str, div_id: str) -> str:
    """The part of the DOM from the element with id `div_id` to the next plot's."""
    start = dom.index(f'id="{div_id}"')
    end = dom.find('class="plotly-graph-div', dom.index(">", start))
    return dom[start : end if end > 0 else len(dom)]


async def test_the_report_of_a_stress_run_draws_every_fault_in_chromium(tmp_path: Path) -> None:
    run_dir, page = tmp_path / "run", tmp_path / "r.html"
    result = await run_xpemu(
        [
            "stress",
            "--seed",
            "5",
            "--duration",
            "10",
            "--faults",
            "4",
            "--nr-gfns",
            "1024",
            "--run-dir",
            str(run_dir),
            "--report-html",
            str(page),
            "--no-live",
        ],
        bound=150,
    )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert f"xpemu report: {page}" in out
    report = json.loads((run_dir / "report.json").read_text())
    faults = [
        json.loads(ln)
        for ln in (run_dir / "xpemu.log").read_text().splitlines()
        if '"stack.fault"' in ln
    ]
    assert len(faults) == sum(report["faults_injected"].values()) >= 3

    shot = tmp_path / "report.png"
    dom, console = await browse(page, tmp_path, shot)
    assert console == []
    assert shot.stat().st_size > 10_000

    timeline = _div(dom, "timeline")
    assert timeline.count('class="main-svg"') >= 1  # plotly drew it (offline: inlined)
    assert timeline.count('<g class="shape-group"') == len(faults)  # one line per fault
    labels = re.findall(r'class="annotation-text"[^>]*data-unformatted="([^"]*)"', timeline)
    kinds = [label.split()[0] for label in labels if label.split()[0] in report["faults_injected"]]
    assert sorted(kinds) == sorted(f["fault"] for f in faults)
    for v in range(report["config"]["vcpus"]):
        assert f'data-unformatted="vCPU {v}"' in timeline  # a row per vCPU
    assert timeline.count('class="trace bars"') == report["config"]["vcpus"]
    assert timeline.count('class="trace scatter') >= 8  # pages 3, rates 2, latency 3

    hist = _div(dom, "histograms")
    bins = len(report["guest"]["latency_hist_ms"]) + len(report["populate_hist_ms"])
    assert bins > 2 and hist.count('class="point"') == bins

    assert 'id="verdict"' in dom and report["replay"] in dom.replace("&nbsp;", " ")
    assert dom.count("<tr><td>vCPU") > 0  # the table of pauses


async def test_the_checks_catch_a_page_that_breaks_offline(tmp_path: Path) -> None:
    """Planted: a page whose plotly.js is not inlined (it would need the network) and
    one that logs an error: the console check sees both, and nothing is drawn."""
    import plotly.graph_objects as go
    import plotly.io as pio

    fig = go.Figure(go.Scatter(x=[0, 1], y=[1, 2]))
    bad = tmp_path / "bad.html"
    bad.write_text(pio.to_html(fig, include_plotlyjs="cdn", div_id="timeline"))
    noisy = tmp_path / "noisy.html"
    noisy.write_text('<html><body><script>console.error("planted")</script></body></html>')
    dom, console = await browse(bad, tmp_path)
    assert console and "Plotly is not defined" in " ".join(console)
    assert 'class="main-svg"' not in _div(dom, "timeline")
    _, console = await browse(noisy, tmp_path)
    assert len(console) == 1 and "planted" in console[0]


def test_chromium_is_the_real_one() -> None:
    assert CHROMIUM is not None
    version = subprocess.run([CHROMIUM, "--version"], capture_output=True, check=False)
    assert b"Chromium" in version.stdout
