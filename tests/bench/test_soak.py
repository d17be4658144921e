"""Memory over time: the soak's trend figures, and (slow) a 5-minute `xpemu up` at full
load whose processes show no upward RSS trend.

The bound of the slow test is 20 MB per hour per process, as the least-squares slope of
the samples after the first minute: four minutes of samples cannot resolve the 1 MB/h goal
(RSS moves by a few hundred KB as pools and caches settle; the goal is for the 30-minute
`xpemu bench --soak`), but they do catch a leak of the kind issue 21 found: the guest's
latency array grew 170 MB an hour. hv is judged less the host frames in use (`hv-frames`):
those are the guests' memory, bounded by the host's frames, and their count follows
`tot_pages` up and down by megabytes within minutes (one 5-minute run saw hv's raw RSS
rise 1.2 MB, 19.6 MB/h, with nothing growing).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from stack.bench.soak import render, run_soak, slope_per_hour, summarise

TREND_BOUND_MB_PER_H = 20.0
#: RSS may move this much between the first minute and the end of a 5-minute run.
ENDS_BOUND_MB = 2.0


def _series(mb_per_hour: float, seed: int) -> list[tuple[float, int]]:
    rng = random.Random(seed)
    base = 40e6
    return [
        (t, int(base + mb_per_hour * 1e6 * t / 3600 + rng.uniform(-300e3, 300e3)))
        for t in range(0, 301, 10)
    ]


def _within_bounds(fig: dict[str, float]) -> bool:
    ends = abs(fig["rss_end_mb"] - fig["rss_1min_mb"])
    return fig["slope_mb_per_h"] <= TREND_BOUND_MB_PER_H and ends <= ENDS_BOUND_MB


@pytest.mark.parametrize("seed", range(5))
def test_the_trend_check_passes_a_flat_series_and_fails_the_old_guest_leak(seed: int) -> None:
    assert _within_bounds(summarise(_series(0.0, seed)))
    # The planted bug: the growth issue 21 measured (47 KB/s, 170 MB/h), with the same noise.
    leak = summarise(_series(170.0, seed))
    assert not _within_bounds(leak)
    assert leak["slope_mb_per_h"] == pytest.approx(170, rel=0.2)


def test_slope_and_summary_figures() -> None:
    assert slope_per_hour([]) == 0.0 and slope_per_hour([(5.0, 1)]) == 0.0
    assert slope_per_hour([(0.0, 0), (3600.0, 1_000_000)]) == pytest.approx(1e6)
    fig = summarise([(0.0, 10), (60.0, 2_000_000), (3660.0, 3_000_000)])
    assert fig["rss_1min_mb"] == 2.0 and fig["rss_end_mb"] == 3.0
    assert fig["growth_mb_per_h"] == pytest.approx(1.0) and fig["samples"] == 3
    assert summarise([(1.0, 5)]) == {"samples": 1}  # under a minute: no figure


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_five_minutes_at_full_load_show_no_upward_memory_trend(tmp_path: Path) -> None:
    said: list[str] = []
    res = await run_soak(5, tmp_path, said.append)
    table = render(res)
    print(table)
    assert res["xpemu_exit"] == 0 and res["run_ok"] is True, table
    # hv less the host frames in use: the guests' memory follows tot_pages (see bench/soak.py).
    for name in ("xpemu", "hv-frames", "pager", "guest"):
        fig = res["processes"][name]
        assert fig["samples"] >= 25, table  # every 10 s for 5 minutes
        assert _within_bounds(fig), f"{name}: {fig}\n{table}"


def test_the_frame_pool_is_found_by_its_size_and_its_resident_pages_counted() -> None:
    """hv-frames subtracts the pool's resident pages read from smaps (exact), not a count
    of frames in use read a moment apart from the RSS."""
    import mmap
    import os

    from stack.bench.soak import pool_rss_bytes, rss_less_pool_bytes

    size = 777 * 4096  # a size no other mapping of this process has
    pool = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        pool.madvise(mmap.MADV_NOHUGEPAGE)
        assert pool_rss_bytes(os.getpid(), size) == 0
        own, empty = rss_less_pool_bytes(os.getpid(), size) or (0, -1)
        assert own > 1_000_000 and empty == 0  # the interpreter, its heap, its libraries
        for page in range(0, 500 * 4096, 4096):
            pool[page] = 1
        assert pool_rss_bytes(os.getpid(), size) == 500 * 4096
        # 2 MB more resident in the pool, none of it counted in the rest
        after, touched = rss_less_pool_bytes(os.getpid(), size) or (0, 0)
        assert abs(after - own) < 200 * 4096 and touched == 500 * 4096
        # Read-only: a mapping the kernel cannot merge with a neighbour (an anonymous
        # read-write one, such as a connection's receive buffer, would swallow it).
        twin = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ)
        assert pool_rss_bytes(os.getpid(), size) is None  # two candidates: no guess
        assert rss_less_pool_bytes(os.getpid(), size) is None
        twin.close()
    finally:
        pool.close()
    assert pool_rss_bytes(2**22 + 1, size) is None  # no such process
    assert rss_less_pool_bytes(2**22 + 1, size) is None
