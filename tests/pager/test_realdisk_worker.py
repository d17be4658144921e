"""The disk phase's hand-offs without a scheduler pass: `realdisk.in_worker` (a job to a
worker thread at once) and the store's phase lock taken at once when free (`pager.disk.held`)."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from pager.disk import held
from pager.realdisk import in_worker


async def test_in_worker_returns_the_result_from_another_thread() -> None:
    with trio.fail_after(10):
        ident = await in_worker(threading.get_ident)
    assert ident != threading.get_ident()


async def test_in_worker_raises_the_jobs_exception() -> None:
    def broken() -> None:
        raise OSError(5, "planted EIO")

    with trio.fail_after(10), pytest.raises(OSError, match="planted EIO"):
        await in_worker(broken)


async def test_a_cancel_waits_for_the_thread_and_then_takes_effect() -> None:
    started, gate = threading.Event(), threading.Event()
    done: list[str] = []

    def job() -> str:
        started.set()
        gate.wait(10)
        done.append("job")
        return "result"

    async def caller(scope: trio.CancelScope) -> None:
        with scope:
            done.append(await in_worker(job))  # the thread's result, cancel or not
            await trio.lowlevel.checkpoint()  # where the cancel takes effect
            done.append("not reached")
        done.append("caller out")

    with trio.fail_after(10):
        scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller, scope)
            await trio.to_thread.run_sync(started.wait)
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert done == []  # still waiting for the thread: not abandoned
            gate.set()
    assert done == ["job", "result", "caller out"]


async def test_a_call_already_cancelled_starts_no_job() -> None:
    ran: list[int] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        await in_worker(lambda: ran.append(1))
    assert scope.cancelled_caught and ran == []


async def test_a_free_phase_lock_is_taken_without_a_checkpoint() -> None:
    lock = trio.Lock()
    with trio.testing.assert_no_checkpoints():
        async with held(lock):
            assert lock.locked()
    assert not lock.locked()


async def test_a_held_phase_lock_is_waited_for() -> None:
    lock = trio.Lock()
    order: list[str] = []

    async def second() -> None:
        async with held(lock):
            order.append("second")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with held(lock):
                nursery.start_soon(second)
                await trio.testing.wait_all_tasks_blocked()
                order.append("first")  # the second is still waiting
    assert order == ["first", "second"]
