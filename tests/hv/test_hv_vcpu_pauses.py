"""Per-vCPU pause counters: count, total and longest paused time, exact on trio's mock clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hv_helpers import Harness

from hv.domain import Domain
from hv.frames import FramePool
from hv.vcpu import VCpu
from protocol import Errno


async def test_pauses_total_and_longest_are_exact_on_the_mock_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ended: list[float] = []
    v = VCpu(0, lambda vcpu, s: ended.append(s))
    assert v.stats() == {"vcpu": 0, "paused": False, "pauses": 0, "paused_s": 0, "longest_s": 0}

    v.pause(1)  # woken through a waiting task
    async with trio.open_nursery() as nursery:
        nursery.start_soon(v.wait_unpaused)
        await trio.sleep(2.5)
        v.unpause()
    assert ended == [2.5]

    v.pause(2)  # an open pause counts so far
    await trio.sleep(0.25)
    assert v.stats() == {
        "vcpu": 0,
        "paused": True,
        "pauses": 2,
        "paused_s": 2.75,
        "longest_s": 2.5,
    }
    v.then(lambda outcome: None, owner="conn")  # woken through a continuation
    await trio.sleep(3.75)
    v.unpause(Errno.ESRCH)
    v.pause(3)  # ended by its owner going away
    v.then(lambda outcome: None, owner="conn")
    await trio.sleep(0.5)
    v.forget("conn")
    assert ended == [2.5, 4.0, 0.5]
    assert v.stats() == {
        "vcpu": 0,
        "paused": False,
        "pauses": 3,
        "paused_s": 7.0,
        "longest_s": 4.0,
    }
    v.unpause()  # nothing open: nothing counted twice
    assert v.stats()["paused_s"] == 7.0


async def test_domain_reports_each_vcpu_and_the_round_trip_histogram(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dom = Domain(
        1,
        FramePool(64),
        nr_gfns=16,
        vcpus=2,
        ring_size=4,
        ring_mode="reattach",
        instance="t",
    )
    for seconds in (0.002, 0.5):
        dom.vcpus[1].pause(7)
        await trio.sleep(seconds)
        dom.vcpus[1].unpause()
    stats = dom.vcpu_stats()
    assert [v["pauses"] for v in stats["vcpus"]] == [0, 2]
    assert stats["vcpus"][1]["paused_s"] == pytest.approx(0.502)
    assert stats["vcpus"][1]["longest_s"] == pytest.approx(0.5)
    assert stats["populate_ms"]["max"] == pytest.approx(500.0)
    assert sum(n for _, _, n in stats["populate_hist_ms"]) == 2
    assert dom.status()["vcpu_stats"][1]["pauses"] == 2


async def test_status_and_counters_carry_the_pauses_through_the_protocol(
    harness: Harness,
) -> None:
    dom = next(iter(harness.hv.domains.values()))
    dom.vcpus[0].pause(1)
    await trio.sleep(0.01)
    with trio.fail_after(10):
        async with harness.client("control", None) as control:
            st = await control.call("status")
            counters = await control.call("counters")
    stats = st["domains"][0]["vcpu_stats"]
    assert stats[0]["paused"] and stats[0]["pauses"] == 1 and stats[0]["paused_s"] > 0
    assert [v["vcpu"] for v in stats] == list(range(len(dom.vcpus)))
    assert counters["domains"][0]["vcpus"][0]["pauses"] == 1
    assert counters["domains"][0]["populate_hist_ms"] == []  # the pause is still open
    dom.vcpus[0].unpause()
