"""Guest building blocks: contents, shadow, patterns, stats, and the detectors.

The detectors (wrong bytes, stale versions, stuck vCPUs) are proven against a fake server
that misbehaves on purpose (guest_fakehv.py); the real hv is in test_guest_hv.py.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
import trio
from guest_fakehv import FakeGuestHv

from guest import (
    ZERO_PAGE,
    GfnState,
    GuestConfig,
    Latencies,
    Shadow,
    ZipfTable,
    diagnose,
    make_pattern,
    page_bytes,
    run_workload,
)
from transport import open_client
from transport.histogram import LatencyHistogram


def test_page_bytes_depend_on_every_part_of_the_key() -> None:
    base = page_bytes(1, 2, 3)
    assert len(base) == 4096
    assert base == page_bytes(1, 2, 3)
    others = {page_bytes(9, 2, 3), page_bytes(1, 9, 3), page_bytes(1, 2, 9)}
    assert base not in others and len(others) == 3
    # Not a tiled pattern: a shift by any block size is detected.
    assert base[64:128] != base[0:64] and base[:2048] != base[2048:]


def test_shadow_is_compact_and_round_trips(tmp_path) -> None:
    shadow = Shadow(1 << 20, seed=5)
    assert shadow.nbytes() <= 5 * (1 << 20)  # five bytes per gfn
    shadow.wrote(7, 3)
    shadow.ballooned_out(8)
    shadow.wrote(9, 1)
    shadow.ballooned_out(9)
    shadow.ballooned_in(9)
    shadow.lost(10)
    assert shadow.expected(7) == page_bytes(5, 7, 3)
    assert shadow.expected(8) is None and shadow.expected(10) is None
    assert shadow.expected(9) == ZERO_PAGE and shadow.versions[9] == 1  # version kept
    path = tmp_path / "shadow"
    shadow.save(path)
    back = Shadow.load(path)
    assert back.versions == shadow.versions and back.states == shadow.states
    assert back.seed == 5 and back.state(10) is GfnState.LOST
    (tmp_path / "bad").write_bytes(b"nope\n")
    with pytest.raises(ValueError):
        Shadow.load(tmp_path / "bad")


def test_diagnose_names_stale_versions_and_zeros() -> None:
    assert diagnose(1, 5, 4, page_bytes(1, 5, 2)[100:200], 100) == "version 2 of this gfn"
    assert diagnose(1, 5, 4, bytes(50), 0) == "zeros"
    assert diagnose(1, 5, 4, page_bytes(1, 6, 4), 0) == "unrecognised bytes"


def test_patterns_stay_in_range_and_have_their_shape() -> None:
    n = 1000
    zipf = ZipfTable(n, 1.2, seed=3)
    draws = {}
    for name in ("seq", "uniform", "zipf", "hotset"):
        f = make_pattern(name, nr_gfns=n, vcpu=1, vcpus=4, rng=random.Random(1), zipf=zipf)
        draws[name] = [f(i * 0.01) for i in range(5000)]
        assert all(0 <= g < n for g in draws[name])
    assert draws["seq"][:3] == [250, 251, 252]
    top = Counter(draws["zipf"]).most_common(10)
    assert sum(c for _, c in top) > 5000 * 0.3  # skewed: ten gfns take a big share
    assert len(set(draws["uniform"])) > 900
    early = Counter(g for g in draws["hotset"][:500])
    late = Counter(g for g in draws["hotset"][-500:])
    assert set(dict(early.most_common(20))) != set(dict(late.most_common(20)))  # it moves
    with pytest.raises(ValueError):
        make_pattern("nope", nr_gfns=n, vcpu=0, vcpus=1, rng=random.Random())


def test_latency_percentiles() -> None:
    lat = Latencies()
    for ms in range(1, 101):
        lat.add(ms / 1000)
    s = lat.summary_ms()
    # Fixed-size histogram: percentiles within 0.1%, max and mean exact.
    assert s["p50"] == pytest.approx(50, rel=1e-3) and s["p99"] == pytest.approx(99, rel=1e-3)
    assert s["max"] == 100 and s["mean"] == 50.5
    assert Latencies().summary_ms()["max"] == 0


@pytest.mark.parametrize(("highest_s", "digits"), [(3600.0, 3), (600.0, 2), (1.0, 1)])
def test_latencies_add_records_what_hdrh_records(highest_s: float, digits: int) -> None:
    """The guest's `add` writes hdrh's bucket arithmetic out inline: every bucket count,
    hdrh's total, minimum and maximum, and the exact figures are `LatencyHistogram.add`'s,
    over every power-of-two edge of the range, above it, below zero, and random values."""
    top = highest_s * 1e6
    edges = [0, 1, 2, 3, top - 1, top, top + 1, 2 * top]
    edges += [(1 << k) + d for k in range(1, int(top).bit_length() + 1) for d in (-1, 0, 1)]
    rng = random.Random(5)
    samples = [us / 1e6 for us in edges] + [-1e-3, -0.0]
    samples += [rng.lognormvariate(-7, 2.5) for _ in range(20_000)]
    fast, ref = Latencies(highest_s, digits), LatencyHistogram(highest_s, digits)
    for i, s in enumerate(samples):
        fast.add(s)
        ref.add(s)
        if i < len(edges):  # each edge on its own, so a wrong bucket shows which
            assert list(fast._hist.counts) == list(ref._hist.counts), s
    for attr in ("total_count", "min_value", "max_value"):
        assert getattr(fast._hist, attr) == getattr(ref._hist, attr), attr
    assert list(fast._hist.counts) == list(ref._hist.counts)
    assert (fast.count, fast.sum_s, fast.min_s, fast.max_s) == (
        ref.count,
        ref.sum_s,
        ref.min_s,
        ref.max_s,
    )
    assert fast.summary_ms() == ref.summary_ms()


@pytest.mark.parametrize(
    "change",
    [
        {"write_ratio": 2.0},
        {"pattern": "nope"},
        {"stuck_after": 0},
        {"duration": None, "ops": None},
        {"vcpus": 0},
    ],
)
def test_config_rejects_bad_values(change: dict) -> None:
    with pytest.raises(ValueError):
        GuestConfig(**change).check()


async def _run_fake(fake: FakeGuestHv, config: GuestConfig, setup=None):
    a, b = (trio.SocketStream(s) for s in trio.socket.socketpair())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake.serve, b)
        async with open_client(a, "guest") as client:
            await client.hello(1)
            if setup is not None:
                await setup(client)
            report = await run_workload(client, config)
        nursery.cancel_scope.cancel()
    return report


async def test_clean_fake_run_passes() -> None:
    fake = FakeGuestHv(64, 3)
    with trio.fail_after(20):
        r = await _run_fake(fake, GuestConfig(seed=1, ops=600, duration=None, balloon_every=0))
    assert r.ok, r.summary()
    assert r.ops >= 600 and r.writes > 0 and r.verified == 64 and r.integrity_errors == 0


async def test_detects_a_flipped_byte() -> None:
    fake = FakeGuestHv(32, 2)
    fake.corrupt.add(5)
    with trio.fail_after(20):
        r = await _run_fake(fake, GuestConfig(seed=2, ops=300, duration=None, balloon_every=0))
    assert not r.ok and r.integrity_errors >= 1
    assert any(d["gfn"] == 5 for d in r.error_details)


async def test_detects_a_stale_version() -> None:
    """hv handing back an older copy (a pager restoring a stale slot) is caught and named."""
    fake = FakeGuestHv(8, 1)
    config = GuestConfig(seed=3, ops=0, duration=None, balloon_every=0, pattern="seq")

    async def setup(client) -> None:
        fake.stale[4] = page_bytes(3, 4, 1)  # what version 1 held

    r = await _run_fake(fake, config, setup)
    # Nothing was written, so the guest expects zeros and must name the stale bytes.
    assert r.integrity_errors == 1
    assert "version 1 of this gfn" in r.error_details[0]["what"]


async def test_ballooned_gfn_must_fault_and_comes_back_zeroed() -> None:
    fake = FakeGuestHv(16, 2)
    with trio.fail_after(30):
        r = await _run_fake(
            fake,
            GuestConfig(
                seed=4, duration=1.5, balloon_every=0.1, balloon_count=3, pattern="uniform"
            ),
        )
    assert r.ok, r.summary()
    assert r.balloon_out > 0 and r.balloon_in == r.balloon_out
    assert r.efault_checks > 0
    assert not fake.invalid  # everything ballooned back in before the verify pass


async def test_balloon_that_answers_data_is_an_error() -> None:
    """A gfn hv says it freed, yet still serves bytes for, is an integrity error."""
    fake = FakeGuestHv(8, 1)
    real_handle = fake._handle

    def leaky(op, rid, a):
        reply = real_handle(op, rid, a)
        if op == "decrease_reservation":
            fake.invalid.clear()  # hv "forgets" it freed them
        return reply

    fake._handle = leaky  # type: ignore[method-assign]  # the planted bug: a leaky hv
    with trio.fail_after(30):
        r = await _run_fake(
            fake, GuestConfig(seed=5, duration=1.0, balloon_every=0.05, balloon_count=4)
        )
    assert r.integrity_errors > 0 and not r.ok


async def test_stuck_vcpu_is_reported_not_hung() -> None:
    fake = FakeGuestHv(8, 2)
    fake.hold.add(3)
    config = GuestConfig(seed=6, duration=0.5, stuck_after=0.5, balloon_every=0, pattern="seq")
    with trio.fail_after(15):
        r = await _run_fake(fake, config)
    assert r.stuck_vcpus and not r.ok
    assert r.aborted is not None
    assert fake.held >= 1
