"""The sim section's steady figure: trio run-loop passes per seed, the same on every run."""

from __future__ import annotations

from sim import run_seed
from stack.bench.sim import LoopPasses, sim_rows


def test_loop_passes_are_counted_and_the_same_for_a_seed() -> None:
    counts = []
    for _ in range(2):
        loop = LoopPasses()
        result = run_seed(3, scenario="tiny", instruments=[loop])
        assert result.ok, result.failures
        counts.append(loop.passes)
    assert counts[0] > 100  # a tiny seed still takes hundreds of passes
    assert counts[0] == counts[1]


def test_the_passes_row_is_shown() -> None:
    sim = {
        "passed": 2, "seeds": 2, "seeds_per_min": 30.0, "floor_seeds_per_min": 25.0,
        "seeds_per_cpu_min": 35.0, "floor_seeds_per_cpu_min": 27.0, "stress_replay_s": 3.0,
        "stress_replay_cpu_s": 2.5, "stress_replay_lives": 36, "stress_min_s": 40.0,
        "loop_passes_per_seed": 22703.0,
    }  # fmt: skip
    rows = sim_rows({"sim": sim})
    assert any("run-loop passes" in r[0] and r[1] == "22,703" for r in rows)
