"""The sim's clock: time jumps to the next wake-up when nothing can run, and its timers
wake at their instant, mixed with trio's own deadlines, and cancel like a sleep."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest
import trio

from sim.clock import POLL_EVERY, SimClock, sleep_until
from sim.net import Link


def run(fn: Callable[[], Awaitable[object]]) -> None:
    trio.run(fn, clock=SimClock())  # pytest's timeout bounds the test


def test_timers_and_deadlines_wake_in_time_order() -> None:
    woke: list[tuple[str, float]] = []

    async def timer(name: str, at: float) -> None:
        await sleep_until(at)
        woke.append((name, trio.current_time()))

    async def sleeper(name: str, seconds: float) -> None:
        await trio.sleep(seconds)
        woke.append((name, trio.current_time()))

    async def main() -> None:
        assert trio.current_time() == 0.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timer, "t3", 3.0)
            nursery.start_soon(sleeper, "s2", 2.0)
            nursery.start_soon(timer, "t1", 1.0)
            nursery.start_soon(sleeper, "s4", 4.0)
            nursery.start_soon(timer, "t2", 2.0)

    run(main)
    assert sorted(woke, key=lambda w: w[1]) == woke
    assert dict(woke) == {"t1": 1.0, "s2": 2.0, "t2": 2.0, "t3": 3.0, "s4": 4.0}


def test_a_timer_in_the_past_is_a_checkpoint() -> None:
    async def main() -> None:
        await trio.sleep(1.0)
        with trio.CancelScope() as scope:
            scope.cancel()
            await sleep_until(0.5)  # cancelled at its checkpoint
        assert scope.cancelled_caught
        assert trio.current_time() == 1.0

    run(main)


def test_a_cancelled_timer_wakes_nobody_later() -> None:
    async def main() -> None:
        with trio.move_on_at(1.0) as scope:
            await sleep_until(5.0)
        assert scope.cancelled_caught
        assert trio.current_time() == 1.0
        await trio.sleep(10.0)  # the dropped timer at 5.0 must not reschedule this task
        assert trio.current_time() == 11.0

    run(main)


def test_a_timer_keeps_running_work_from_jumping_time() -> None:
    # Time moves only when nothing can run, as under MockClock(autojump_threshold=0).
    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def busy() -> None:
                for _ in range(100):
                    await trio.lowlevel.checkpoint()
                    assert trio.current_time() == 0.0

            nursery.start_soon(busy)
            await sleep_until(1.0)
            assert trio.current_time() == 1.0

    run(main)


def test_latency_delays_arrival_under_the_sim_clock() -> None:
    async def main() -> None:
        client, server = Link("l", latency=0.25).ends
        await trio.sleep(1.0)
        await client.send_all(b"a")
        await client.send_all(b"b")
        assert await server.receive_some(10) == b"ab"
        assert trio.current_time() == pytest.approx(1.25)
        await client.aclose()
        assert await server.receive_some(10) == b""

    run(main)


class _Steps(trio.abc.Instrument):
    """Steps per task name."""

    def __init__(self) -> None:
        self.by_name: dict[str, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        name = task.name.rsplit(".", 1)[-1]
        self.by_name[name] = self.by_name.get(name, 0) + 1


async def _send_and_close(client: trio.abc.Stream) -> None:
    for at in (1.0, 2.0, 3.0):
        await trio.sleep_until(at)
        await client.send_all(b"x")
        await client.send_all(b"y")  # in flight behind the first: the same wake-up
    await trio.sleep_until(4.0)
    await client.aclose()


async def _send_then_cancel(client: trio.abc.Stream, scope: trio.CancelScope) -> None:
    await trio.sleep(0.05)
    await client.send_all(b"z")  # arrives at 0.3
    await trio.sleep(0.05)
    scope.cancel()


def test_a_waiting_reader_wakes_once_per_chunk_at_its_arrival() -> None:
    """A reader waiting on an empty pipe is woken by the sim's clock when the next chunk
    arrives (one step), not at the send and again at the arrival; a close wakes it at
    once; a reader cancelled while waiting is not woken by a later send."""
    steps = _Steps()
    got: list[tuple[bytes, float]] = []

    async def reader(server: trio.abc.ReceiveStream) -> None:
        while data := await server.receive_some(10):
            got.append((data, trio.current_time()))
        got.append((b"", trio.current_time()))

    async def main() -> None:
        client, server = Link("l", latency=0.25).ends
        with trio.fail_after(100):  # simulated: a reader the close does not wake
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader, server)
                await _send_and_close(client)

        assert got == [(b"xy", 1.25), (b"xy", 2.25), (b"xy", 3.25), (b"", 4.0)]
        # Readers cancelled while they wait, before a send and with a chunk in flight:
        # neither a later send nor the chunk's arrival may wake them (here: end the
        # sleep that follows early).
        client, server = Link("m", latency=0.25).ends
        with trio.move_on_after(0.5):
            await server.receive_some(10)
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send_then_cancel, client, nursery.cancel_scope)
            await server.receive_some(10)  # an empty pipe; cancelled before b"z" arrives
        await trio.sleep(1.0)
        assert trio.current_time() == t0 + 0.1 + 1.0
        assert await server.receive_some(10) == b"z"

    trio.run(main, clock=SimClock(), instruments=[steps])
    # Its start, then one step per wake-up: three arrivals, and the close (it returns).
    assert steps.by_name["reader"] == 1 + 4, steps.by_name


def test_a_thread_s_result_arrives_though_the_run_polls_less() -> None:
    """The clock polls trio's I/O on one pass in POLL_EVERY while tasks can run: a thread
    that hands its result back (through trio's wake-up socket) is still heard, within
    POLL_EVERY passes of a task that never lets the run go idle, and at once when the
    run is idle. Only one pass in POLL_EVERY polls while tasks spin."""
    polls: list[float] = []
    passes = 0

    async def main() -> None:
        nonlocal passes
        io = trio._core._run.GLOBAL_RUN_CONTEXT.runner.io_manager
        poll = io._poll
        io._poll = lambda timeout: polls.append(timeout) or poll(timeout)
        assert await trio.to_thread.run_sync(lambda: 7) == 7  # idle: polls and waits
        got: list[int] = []

        async def in_thread() -> None:
            got.append(await trio.to_thread.run_sync(lambda: 8))

        # An absolute bound in wall time: how many passes the thread takes to run and
        # hand back depends on the machine (the GIL's hand-over, thread start); a bound of
        # 6,400 passes failed once on an idle machine, whose passes are fastest.
        deadline = time.monotonic() + 30
        async with trio.open_nursery() as nursery:
            nursery.start_soon(in_thread)
            while not got:  # never idle: only the thinned polls can hear the thread
                passes += 1
                assert time.monotonic() < deadline, "the thread's result never came"
                await trio.lowlevel.checkpoint()
        assert got == [8]

    run(main)
    spinning = [t for t in polls if t == 0]
    assert passes >= len(spinning) * POLL_EVERY - POLL_EVERY  # one pass in POLL_EVERY
