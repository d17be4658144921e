"""`xpemu bench --profile DIR`: py-spy records hv, pager and guest; one flame graph each."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

from stack.bench import BenchOptions, Sizes, run_bench
from stack.bench.flame import read_collapsed, render_svg, write_flamegraph
from stack.cli import main as xpemu_main

PY_SPY = Path(sys.executable).with_name("py-spy")

TINY = Sizes(
    repeats=1,
    floor_n=50,
    pop_samples=30,
    pop_warm=2,
    par_reads=40,
    tput_pages={1: 4},
    recovery_pages=(300,),
    policy_gfns=256,
    policy_capacity=64,
    policy_len=4000,
    vcpu_counts=(4,),
)


def test_flame_graph_widths_follow_the_samples(tmp_path: Path) -> None:
    raw = tmp_path / "hv.txt"
    raw.write_text(
        "main (hv/__main__.py:10);serve (hv/server.py:20);send (trio/_socket.py:5) 3\n"
        "main (hv/__main__.py:10);serve (hv/server.py:20) 1\n"
        "main (hv/__main__.py:10);idle <&> (x.py:1) 4\n"
    )
    root = read_collapsed(raw)
    assert root.count == 8
    svg = render_svg(root, "hv")
    # The root spans the width; each frame's title says its share; names are escaped.
    assert '<rect x="0.0" y="' in svg and 'width="1200.0"' in svg
    assert "send (trio/_socket.py:5) (3 samples, 37.5%)" in svg
    assert "serve (hv/server.py:20) (4 samples, 50.0%)" in svg
    assert "idle &lt;&amp;&gt; (x.py:1)" in svg and "idle <&>" not in svg
    assert write_flamegraph(raw, tmp_path / "hv.svg")
    empty = tmp_path / "none.txt"
    empty.write_text("")
    assert not write_flamegraph(empty, tmp_path / "none.svg")
    assert not (tmp_path / "none.svg").exists()


@pytest.mark.skipif(not PY_SPY.exists(), reason="py-spy is not installed (the profile extra)")
async def test_profile_writes_one_flame_graph_per_process(tmp_path: Path) -> None:
    prof = tmp_path / "prof"
    prof.mkdir()
    opts = BenchOptions(only=("populate",), sizes=TINY, work_dir=tmp_path / "w", profile=prof)
    with trio.fail_after(100):
        await run_bench(opts, lambda s: None)
    for proc in ("hv", "pager1", "guest"):  # the default ring mode's stack
        svg = prof / f"populate-{proc}.svg"
        assert svg.stat().st_size > 0, proc
        text = svg.read_text()
        assert text.startswith("<svg") and "samples" in text
    # Every process of both ring modes' stacks: one raw profile and one SVG each.
    assert len(list(prof.glob("*.svg"))) == len(list(prof.glob("*.txt"))) == 6


def test_profile_without_py_spy_is_one_line_and_status_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    structlog_restored: None,  # `xpemu bench` configures logging onto capsys's stream
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    assert xpemu_main(["bench", "--only", "populate", "--profile", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "py-spy" in err[0]
