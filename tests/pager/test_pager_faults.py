"""The fault SPEC grammar and its triggers."""

from __future__ import annotations

import pytest

from pager import (
    CRASH_POINTS,
    CrashPoint,
    FaultSpecError,
    SimulatedCrash,
    parse_faults,
    raise_simulated_crash,
)


def crashes(spec: str, point: CrashPoint, passes: int) -> list[int]:
    """The passes (1-based) at which `point` crashes."""
    seen: list[int] = []
    count = [0]

    def crash(p: str) -> None:
        assert p == point
        seen.append(count[0])

    faults = parse_faults(spec, crash=crash)
    for _ in range(passes):
        count[0] += 1
        faults.hit(point)
    return seen


def test_nth_pass() -> None:
    assert crashes("after_write@3", CrashPoint.after_write, 10) == [3]
    assert crashes("after_write@3+", CrashPoint.after_write, 5) == [3, 4, 5]
    assert crashes("after_write@3", CrashPoint.after_fsync, 10) == []


def test_probability_is_seeded() -> None:
    a = crashes("seed=7,after_evict%0.3", CrashPoint.after_evict, 200)
    b = crashes("after_evict%0.3,seed=7", CrashPoint.after_evict, 200)
    c = crashes("seed=8,after_evict%0.3", CrashPoint.after_evict, 200)
    assert a == b and a != c
    assert 30 < len(a) < 90


def test_store_faults() -> None:
    faults = parse_faults("store.write=ENOSPC@2+, store.read=corrupt@1")
    assert [faults.store_fault("write") for _ in range(3)] == [None, "ENOSPC", "ENOSPC"]
    assert [faults.store_fault("read") for _ in range(2)] == ["corrupt", None]
    assert faults.store_fault("fsync") is None


def test_simulated_crash() -> None:
    faults = parse_faults("before_resume@1", crash=raise_simulated_crash)
    with pytest.raises(SimulatedCrash) as info:
        faults.hit(CrashPoint.before_resume)
    assert info.value.point == "before_resume"


def test_every_point_is_accepted() -> None:
    assert parse_faults(",".join(f"{p}@1" for p in CRASH_POINTS)).armed
    assert not parse_faults("").armed


def test_the_names_are_the_enumeration() -> None:
    assert CRASH_POINTS == tuple(p.value for p in CrashPoint)
    assert {p.phase for p in CrashPoint} == {"pageout", "pagein", "recovery"}


def test_passing_a_point_that_is_not_one_is_an_error() -> None:
    faults = parse_faults("after_write@1", crash=raise_simulated_crash)
    with pytest.raises(ValueError, match="not a crash point"):
        faults.hit("after_lunch")  # type: ignore[arg-type]  # the mistake under test
    with pytest.raises(ValueError, match="not a crash point"):
        parse_faults("").hit("after_lunch")  # type: ignore[arg-type]  # unarmed too


@pytest.mark.parametrize(
    "spec",
    [
        "after_lunch@1",
        "after_write",
        "after_write@0",
        "after_write%0",
        "after_write%1.5",
        "store.write=corrupt@1",
        "store.flush=EIO@1",
        "store.write=EPERM@1",
        "seed=x",
        "after_write@1;after_evict@2",
    ],
)
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(FaultSpecError):
        parse_faults(spec)
