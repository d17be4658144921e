"""Replacement policies: xenpaging's sweep, clock's second chance, CAR's two clocks, and a
Zipf trace."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
from pager_harness import open_stack

from pager import CarPolicy, ClockPolicy, PagerConfig, XenpagingPolicy, make_policy
from pager.policy import CAR_RECENT_FAULTS
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
            await run.stop_ok()
    return faults


@pytest.mark.slow
async def test_clock_faults_less_than_xenpaging_with_the_real_hv(tmp_path: Path) -> None:
    trace = zipf_trace(512, 1500, 1.0, seed=4)
    with trio.fail_after(120):
        xen = await _faults_with_hv(tmp_path, "xenpaging", trace)
        clock = await _faults_with_hv(tmp_path, "clock", trace)
    assert clock < 0.9 * xen, (clock, xen)


class Bits:
    """hv's accessed bits of a domain: `touch` sets, the policy's `accessed` reads and clears."""

    def __init__(self, nr: int) -> None:
        self.bits = bytearray(nr)
        self.calls: list[tuple[int, int]] = []

    def touch(self, *gfns: int) -> None:
        for g in gfns:
            self.bits[g] = 1

    async def accessed(self, start: int, count: int) -> bytes:
        self.calls.append((start, count))
        out = set_bits((i for i in range(count) if self.bits[start + i]), count)
        self.bits[start : start + count] = bytes(count)
        return out


# -- car -----------------------------------------------------------------------------------


def car(nr: int, window: int = 8) -> tuple[CarPolicy, Bits]:
    bits = Bits(nr)
    return CarPolicy(nr, bits.accessed, window=window), bits


def car_lists(policy: CarPolicy) -> dict[int, list[int]]:
    """Each list's gfns from its head, checking the links, sizes and `where` agree."""
    lists = {}
    for lst in (1, 2, 3, 4):
        got: list[int] = []
        g = policy.head[lst]
        while g >= 0 and (not got or g != got[0]):
            assert policy.where[g] == lst
            assert policy.prev[policy.next[g]] == g
            got.append(g)
            g = policy.next[g]
            assert len(got) <= policy.nr_gfns
        assert len(got) == policy.size[lst]
        lists[lst] = got
    assert sum(len(v) for v in lists.values()) == sum(1 for w in policy.where if w)
    return lists


async def test_car_chooses_distinct_resident_unskipped_gfns_on_tiny_domains() -> None:
    rng = random.Random(7)
    for nr in range(1, 9):
        policy, bits = car(nr)
        resident = set(range(nr))
        for _ in range(200):
            bits.touch(*rng.sample(range(nr), rng.randint(0, nr)))
            skipped = set(rng.sample(range(nr), rng.randint(0, nr // 2)))
            n = rng.randint(1, nr + 1)
            got = await policy.choose(n, skipped.__contains__)
            assert len(got) == len(set(got)) == min(n, len(resident - skipped))
            assert set(got) <= resident - skipped
            for g in got:
                if rng.random() < 0.9:  # else the nomination was refused: still resident
                    resident.discard(g)
                    policy.paged_out(g)
            for g in sorted(set(range(nr)) - resident):
                if rng.random() < 0.4:
                    bits.touch(g)  # the faulting access
                    resident.add(g)
                    policy.paged_in(g, mru=rng.random() < 0.8)
            lists = car_lists(policy)
            assert set(lists[1] + lists[2]) == resident
            ghosts = lists[3] + lists[4]
            assert all(policy.paged[g] for g in ghosts)
            assert len(ghosts) <= 2 * policy.c and len(lists[1] + lists[3]) <= max(
                policy.c, len(lists[1])
            )
            assert 0 <= policy.p <= policy.c


async def test_car_promotes_gfns_used_again_and_ignores_the_faulting_access() -> None:
    policy, bits = car(8)
    for g in range(8):
        policy.paged_out(g)  # start empty
    for g in range(4):
        bits.touch(g)  # the faulting access: not a second use
        policy.paged_in(g)
    assert await policy.choose(1, lambda g: False) == [0]  # no bit counted
    bits.touch(1, 2)  # used again after the fault
    assert await policy.choose(1, lambda g: False) == [3]
    lists = car_lists(policy)
    assert lists[1] == [0, 3] and lists[2] == [1, 2]
    assert bits.bits == bytearray(8)


async def test_car_counts_the_bits_of_faults_that_waited_long_for_a_choose() -> None:
    nr = CAR_RECENT_FAULTS + 100
    policy, bits = car(nr)
    for g in range(nr):
        policy.paged_out(g)
    for g in range(CAR_RECENT_FAULTS + 44):  # memory below its size: no choose meanwhile
        bits.touch(g)
        policy.paged_in(g)
    # The last CAR_RECENT_FAULTS faults' bits are dropped; the 44 before, which waited
    # longer, may have been used since and count as used.
    assert await policy.choose(1, lambda g: False) == [44]
    assert car_lists(policy)[2] == list(range(44))


def faults_in(policy: CarPolicy, bits: Bits, *gfns: int) -> None:
    for g in gfns:
        bits.touch(g)
        policy.paged_in(g)


async def test_car_ghost_hits_adapt_p_and_come_back_into_t2() -> None:
    policy, bits = car(8)
    for g in range(8):
        policy.paged_out(g)
    faults_in(policy, bits, 0, 1, 2, 3)
    await policy.choose(0, lambda g: False)  # consumes the faults' bits
    bits.touch(1, 2)
    assert await policy.choose(2, lambda g: False) == [0, 3]
    policy.paged_out(0)
    policy.paged_out(3)
    lists = car_lists(policy)
    assert (policy.c, lists[1], lists[2], lists[3]) == (2, [], [1, 2], [0, 3])
    faults_in(policy, bits, 0)  # evicted from T1 too early: p up by max(1, |B2| / |B1|)
    assert policy.p == 1 and car_lists(policy)[2] == [1, 2, 0]
    assert await policy.choose(1, lambda g: False) == [1]
    policy.paged_out(1)
    assert car_lists(policy)[4] == [1]
    faults_in(policy, bits, 3)  # a B1 hit with |B2| = |B1|: up by 1 again
    assert policy.p == 2
    policy.paged_out((await policy.choose(1, lambda g: False))[0])
    faults_in(policy, bits, 1)  # evicted from T2 too early: down by max(1, |B1| / |B2|)
    assert policy.p < 2 and policy.where[1] == 2
    assert policy.size[3] + policy.size[4] <= 2 * policy.c


async def test_car_p_follows_the_workload() -> None:
    nr, cap = 2048, 64
    rng = random.Random(3)
    policy, bits = car(nr)
    resident = set(range(nr))
    cold = iter(range(1024, nr))  # one-off touches: faults that are never used again

    async def run(trace: list[int]) -> None:
        for g in trace:
            bits.touch(g)
            if g not in resident:
                resident.add(g)
                policy.paged_in(g)
            while len(resident) > cap:
                for v in await policy.choose(len(resident) - cap, lambda _: False):
                    resident.discard(v)
                    policy.paged_out(v)
            assert policy.size[3] + policy.size[4] <= 2 * policy.c <= 2 * cap + 2

    def frequent(hot: range, k: int) -> list[int]:
        return [rng.choice(hot) if rng.random() < 0.8 else next(cold) for _ in range(k)]

    # Frequency first: 40 gfns used over and over settle in T2; p stays at 0.
    await run(frequent(range(40), 2000))
    assert policy.p == 0 and policy.size[2] >= 32
    # Recency: a window sliding over other gfns, each used twice 39 accesses apart (more
    # than T1's room, less than the memory): B1 hits, p grows.
    await run([100 + i // 2 + (i % 2) * 20 for i in range(600)])
    high = policy.p
    assert high >= cap / 4
    # Frequency again, a set of 56: more than T2's room (c - p) but less than the memory.
    # Gfns evicted from T2 come back: B2 hits bring p down.
    await run(frequent(range(500, 556), 2000))
    assert policy.p < high / 2


async def test_car_fetches_bits_in_windows() -> None:
    policy, bits = car(64, window=16)
    bits.touch(*range(64))
    got = await policy.choose(4, lambda g: False)
    # The hand went round T1 once (moving every gfn to T2), then took T2's first four.
    assert got == [0, 1, 2, 3]
    assert bits.calls == [(0, 16), (16, 16), (32, 16), (48, 16)]
    assert bits.bits == bytearray(64)


async def test_pager_pages_with_car(tmp_path: Path) -> None:
    nr, cap = 64, 24
    with trio.fail_after(30):
        async with open_stack(tmp_path, nr_gfns=nr, vcpus=2) as stack:
            async with stack.guest() as guest:
                await guest.fill(2)
                run = stack.start_pager(PagerConfig(policy="car", batch=8, target=cap))
                pager = await run.wait_started()
                assert isinstance(pager.policy, CarPolicy)

                def settled() -> bool:
                    return stack.domain_status()["tot_pages"] <= cap

                await stack.until(pager, settled)
                for g in (*range(0, nr, 3), *range(1, nr, 2), 5, 5, 6):
                    await guest.read_check(0, g)
                await guest.write(1, 7, 2)
                await stack.until(pager, settled)
                assert pager.stats.paged_in > 0
                await run.stop_ok()
                stack.assert_clean()
                await guest.verify_all(2)


class _XenSweep:
    """policy_default.c's sweep as Xen writes it, one gfn per step: the reference that the
    memchr sweep of XenpagingPolicy must agree with, choice for choice."""

    def __init__(self, nr: int, mru_size: int) -> None:
        self.nr, self.mru_size = nr, mru_size
        self.paged, self.in_mru = bytearray(nr), bytearray(nr)
        self.mru: list[int] = []
        self.i_mru = 0
        self.current = nr // 2

    def paged_in(self, gfn: int, mru: bool) -> None:
        self.paged[gfn] = 0
        if mru:
            if len(self.mru) < self.mru_size:
                self.mru.append(gfn)
            else:
                self.in_mru[self.mru[self.i_mru]] = 0
                self.mru[self.i_mru] = gfn
                self.i_mru = (self.i_mru + 1) % self.mru_size
            self.in_mru[gfn] = 1

    def choose(self, n: int, skip: set[int]) -> list[int]:
        out: list[int] = []
        for _ in range(self.nr):
            if len(out) >= n:
                break
            self.current = (self.current + 1) % self.nr
            g = self.current
            if self.paged[g] or self.in_mru[g] or g in skip:
                continue
            out.append(g)
        for g in range(self.nr):
            if len(out) >= n:
                break
            if self.in_mru[g] and not self.paged[g] and g not in skip and g not in out:
                out.append(g)
        return out


@pytest.mark.parametrize("seed", range(20))
async def test_xenpaging_sweep_chooses_as_xen_steps(seed: int) -> None:
    """Random page-outs, page-ins (to the MRU list or not), drops and choices with busy
    gfns: the same victims and the same position as Xen's gfn-by-gfn loop, down to a
    domain whose every resident gfn is in the MRU list."""
    rng = random.Random(seed)
    nr = rng.choice([1, 7, 64, 300])
    ours, ref = XenpagingPolicy(nr, mru_size=rng.choice([1, 3, 16])), None
    ref = _XenSweep(nr, ours.mru_size)
    for _ in range(400):
        g = rng.randrange(nr)
        op = rng.random()
        if op < 0.35:
            n = rng.randint(1, 8)
            busy = {rng.randrange(nr) for _ in range(rng.randint(0, 4))}
            got = await ours.choose(n, busy.__contains__)
            assert got == ref.choose(n, busy)
            assert ours.current == ref.current
            for v in got:
                ours.paged_out(v)
                ref.paged[v] = 1
        elif op < 0.7:
            mru = rng.random() < 0.8
            ours.paged_in(g, mru=mru)
            ref.paged_in(g, mru)
        elif op < 0.8:
            ours.dropped(g)
            ref.paged[g] = 0
        else:
            ours.paged_out(g)
            ref.paged[g] = 1


def test_xenpaging_sweep_flags_follow_paged_and_mru_at_random() -> None:
    """The sweep's two flag bytes per gfn stay what `paged` and the MRU list say, through
    any sequence of page-outs, page-ins (MRU or not) and drops."""
    rng = random.Random(19)
    nr = 64
    policy = XenpagingPolicy(nr, mru_size=8)
    for _ in range(5000):
        g = rng.randrange(nr)
        step = rng.randrange(4)
        if step == 0:
            policy.paged_out(g)
        elif step == 1:
            policy.paged_in(g, mru=True)
        elif step == 2:
            policy.paged_in(g, mru=False)
        else:
            policy.dropped(g)
        for x in range(nr):
            paged, mru = policy.paged[x], policy._in_mru[x]
            assert policy._cand[x] == (not paged and not mru)
            assert policy._mru_res[x] == (mru and not paged)
