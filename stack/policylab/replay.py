"""A trace played through a real pager policy object, as the pager drives it: `TraceMemory`."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from pager.policy import make_policy
from protocol import pack_bits

T = TypeVar("T")


class ReplayError(Exception):
    """A policy misbehaved on a trace (chose nothing, a gfn not resident, awaited I/O)."""


def drive(aw: Awaitable[T]) -> T:
    """Run a coroutine that awaits only things that finish at once (the `accessed`
    callable here): no event loop, so a replay costs a function call per `choose`."""
    coro: Any = aw
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise ReplayError("the policy awaited something other than its `accessed` callable")


class TraceMemory:
    """A memory of `capacity` frames driven by a trace through a real pager policy object.

    It does what the pager does around its policy: a touch sets the gfn's accessed bit
    (hv's EPT bit, set by every access, faulting or not); a miss is a fault: the gfn comes
    in (`paged_in`, as after a guest fault) and, the memory being over its size, the
    policy chooses victims (`paged_out`). The `accessed` callable reads and clears bits
    like hv's op. `start="empty"` (Belady's assumption: the first `capacity` misses are
    free of evictions but still count as faults, for every policy alike), or "full":
    every gfn resident and the policy asked for victims down to `capacity` first, as a
    pager attaching to a running domain over its target does.
    """

    def __init__(self, policy: str, nr_gfns: int, capacity: int, start: str = "empty") -> None:
        self.capacity = capacity
        self.bits = bytearray(nr_gfns)
        self.faults = 0
        self.policy = make_policy(policy, nr_gfns, self._accessed)
        if start == "empty":
            self.resident: set[int] = set()
            for g in range(nr_gfns):
                self.policy.paged_out(g)  # nothing resident yet
        else:
            self.resident = set(range(nr_gfns))
            self._shrink()

    async def _accessed(self, start: int, count: int) -> bytes:
        window = self.bits[start : start + count]
        self.bits[start : start + count] = bytes(count)
        return pack_bits(window)

    def _shrink(self) -> None:
        resident, policy = self.resident, self.policy
        while len(resident) > self.capacity:
            victims = drive(policy.choose(len(resident) - self.capacity, lambda _: False))
            if not victims:
                raise ReplayError(f"{policy.name} chose no victim")
            for v in victims:
                if v not in resident:
                    raise ReplayError(f"{policy.name} chose gfn {v}, which is not resident")
                resident.remove(v)
                policy.paged_out(v)

    def run(self, trace: Sequence[int]) -> int:
        """Play the trace; the number of faults."""
        resident, bits, policy, cap = self.resident, self.bits, self.policy, self.capacity
        for g in trace:
            bits[g] = 1
            if g not in resident:
                self.faults += 1
                resident.add(g)
                policy.paged_in(g)
                if len(resident) > cap:
                    self._shrink()
        return self.faults


def replay_faults(
    policy: str, trace: Sequence[int], nr_gfns: int, capacity: int, start: str = "empty"
) -> int:
    """Faults of `policy` (a built-in name or package.module:Class) on `trace`."""
    return TraceMemory(policy, nr_gfns, capacity, start).run(trace)
