"""The pager's restart history stays bounded: the last lives in full, the rest in counts
that match what the full list would have given."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable

import pytest

from stack.lives import LifeLog
from stack.supervisor import FINAL_KILL, PagerLife, life_counts


def _counts(lives: Iterable[PagerLife]) -> Counter[str]:
    return life_counts(lives, final_n=2000)  # the last life: the end phase's


def _lives(n: int, seed: int) -> list[PagerLife]:
    rng = random.Random(seed)
    out = []
    for i in range(1, n + 1):
        life = PagerLife(i, 1000 + i, float(i), attached=rng.random() < 0.8)
        life.killed_by = rng.choice([None, None, "kill", "arm_crash", FINAL_KILL])
        life.fault_kind = rng.choice([None, "crash"])
        life.rc = rng.choice([0, 1, -9])
        out.append(life)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_folded_counts_equal_the_counts_of_the_full_list(seed: int) -> None:
    full = _lives(2000, seed)
    log: LifeLog[PagerLife] = LifeLog(_counts, keep=16)
    for life in full:
        log.append(life)
    assert len(log) == 2000 and len(list(log)) == 16  # held: bounded by `keep`
    assert log.stats() == _counts(full)
    assert log[-1] is full[-1] and log[1999] is full[-1] and log[1984] is full[1984]
    with pytest.raises(IndexError):
        log[10]  # folded away


def test_a_running_life_is_never_folded() -> None:
    log: LifeLog[PagerLife] = LifeLog(_counts, keep=2)
    running = PagerLife(1, 1, 0.0)
    log.append(running)
    for life in _lives(5, 0):
        log.append(life)
    assert log[0] is running and len(list(log)) == 6  # held until it ends
    running.rc = 0
    log.append(PagerLife(7, 7, 0.0))
    assert len(list(log)) == 2 and len(log) == 7
    with pytest.raises(ValueError):
        LifeLog(_counts, keep=0)
