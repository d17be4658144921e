"""Replacement policies: xenpaging's sweep, clock's second chance, and a Zipf trace."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
from pager_harness import open_stack

from pager import ClockPolicy, PagerConfig, XenpagingPolicy, make_policy
from protocol import set_bits


class Memory:
    """A resident set of `capacity` gfns with accessed bits, driven by a trace."""

    def __init__(self, nr: int, capacity: int, policy_name: str) -> None:
        self.nr = nr
        self.capacity = capacity
        self.resident = set(range(nr))
        self.accessed = bytearray(nr)
        self.faults = 0
        self.policy = make_policy(policy_name, nr, self.read_accessed)

    async def read_accessed(self, start: int, count: int) -> bytes:
        bits = set_bits((i for i in range(count) if self.accessed[start + i]), count)
        self.accessed[start : start + count] = bytes(count)
        return bits

    async def shrink(self) -> None:
        while len(self.resident) > self.capacity:
            victims = await self.policy.choose(len(self.resident) - self.capacity, lambda g: False)
            assert victims, "the policy found no victim"
            for g in victims:
                assert g in self.resident, f"{g} chosen twice"
                self.resident.discard(g)
                self.policy.paged_out(g)

    async def touch(self, g: int) -> None:
        self.accessed[g] = 1
        if g not in self.resident:
            self.faults += 1
            self.resident.add(g)
            self.policy.paged_in(g)
            await self.shrink()


def zipf_trace(nr: int, length: int, s: float, seed: int) -> list[int]:
    rng = random.Random(seed)
    weights = [1.0 / (k + 1) ** s for k in range(nr)]
    ranks = list(range(nr))
    rng.shuffle(ranks)  # hot gfns scattered over the address space
    return rng.choices(ranks, weights, k=length)


async def faults_on(policy: str, trace: list[int], nr: int, capacity: int) -> int:
    mem = Memory(nr, capacity, policy)
    await mem.shrink()
    for g in trace:
        await mem.touch(g)
    return mem.faults


async def test_clock_faults_less_than_xenpaging_on_zipf() -> None:
    nr, capacity = 2048, 256
    trace = zipf_trace(nr, 12000, 1.0, seed=4)
    xen = await faults_on("xenpaging", trace, nr, capacity)
    clock = await faults_on("clock", trace, nr, capacity)
    assert clock < 0.8 * xen, (clock, xen)


async def test_xenpaging_sweeps_from_the_middle_and_skips_the_mru() -> None:
    policy = XenpagingPolicy(16, mru_size=2)
    assert await policy.choose(3, lambda g: False) == [9, 10, 11]
    for g in (9, 10, 11):
        policy.paged_out(g)
    policy.paged_in(12)  # 12 came in recently: skipped while in the MRU list
    policy.paged_in(10)
    assert await policy.choose(3, lambda g: g == 13) == [14, 15, 0]
    policy.paged_in(1)  # pushes 12 out of the two-entry MRU list
    got = await policy.choose(16, lambda g: False)
    assert 12 in got and 10 not in got[:13] and 9 not in got and 11 not in got


async def test_xenpaging_takes_mru_gfns_rather_than_miss_the_target() -> None:
    policy = XenpagingPolicy(4, mru_size=4)
    for g in range(4):
        policy.paged_in(g)
    assert sorted(await policy.choose(2, lambda g: False)) == [0, 1]


async def test_clock_gives_accessed_gfns_a_second_chance() -> None:
    accessed = bytearray(8)
    calls = []

    async def read(start: int, count: int) -> bytes:
        calls.append((start, count))
        bits = set_bits((i for i in range(count) if accessed[start + i]), count)
        accessed[start : start + count] = bytes(count)
        return bits

    policy = ClockPolicy(8, read, window=8)
    accessed[0] = accessed[1] = accessed[3] = 1
    assert await policy.choose(2, lambda g: False) == [2, 4]
    policy.paged_out(2)
    policy.paged_out(4)
    # The hand goes on from 5; after a full turn the cleared 0, 1, 3 are victims too.
    assert await policy.choose(5, lambda g: g == 6) == [5, 7, 0, 1, 3]
    assert calls[0] == (0, 8)


def test_unknown_policy() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("lru", 8, None)  # type: ignore[arg-type]


async def _faults_with_hv(tmp_path: Path, policy: str, trace: list[int]) -> int:
    """Guest requests for `trace` against the real hv, the pager settling after each access
    (so the count depends on the policy, not on how far the pager lags behind)."""
    nr, cap = 512, 64
    async with open_stack(tmp_path / policy, nr_gfns=nr, vcpus=1) as stack:
        async with stack.guest() as guest:
            run = stack.start_pager(PagerConfig(policy=policy, batch=8, target=cap))
            pager = await run.wait_started()

            def settled() -> bool:
                return stack.domain_status()["tot_pages"] <= cap

            await stack.until(pager, settled)
            for g in trace:
                await guest.client.call("read", vcpu=0, gfn=g, off=0, len=8)
                await stack.until(pager, settled)
            faults = pager.stats.requests
            run.stop.set()
            await run.finished.wait()
            assert run.error is None
    return faults


@pytest.mark.slow
async def test_clock_faults_less_than_xenpaging_with_the_real_hv(tmp_path: Path) -> None:
    trace = zipf_trace(512, 1500, 1.0, seed=4)
    with trio.fail_after(120):
        xen = await _faults_with_hv(tmp_path, "xenpaging", trace)
        clock = await _faults_with_hv(tmp_path, "clock", trace)
    assert clock < 0.9 * xen, (clock, xen)
