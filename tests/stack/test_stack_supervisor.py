"""The pager supervisor's restart logic under the mock clock, with a stand-in spawner.

Real-process behaviour is in test_stack_e2e.py; here the timing rules are pinned down:
restart at once after a kill, back off when a pager dies without attaching, give up after
MAX_FAILED_STARTS, arm the next start with a scheduled fault, hold restarts while the
gate is closed.
"""

from __future__ import annotations

import signal
from pathlib import Path

import trio

from stack.schedule import Fault
from stack.supervisor import MAX_FAILED_STARTS, PagerSupervisor


class FakePager:
    """A `Spawner` without processes: each start lives `lifetime` seconds then exits `rc`."""

    def __init__(self, lifetime: float, rc: int) -> None:
        self.lifetime, self.rc_on_exit = lifetime, rc
        self.starts: list[tuple[float, dict[str, str] | None]] = []
        self.returncode: int | None = None
        self._killed = trio.Event()
        self.log_path = Path("/nonexistent/pager.log")

    @property
    def pid(self) -> int:
        return 1000 + len(self.starts)

    @property
    def running(self) -> bool:
        return bool(self.starts) and self.returncode is None

    async def start(self, env: dict[str, str] | None = None) -> None:
        self.starts.append((trio.current_time(), env))
        self.returncode = None
        self._killed = trio.Event()

    async def wait(self) -> int:
        with trio.move_on_after(self.lifetime):
            await self._killed.wait()
            self.returncode = -signal.SIGKILL
            return self.returncode
        self.returncode = self.rc_on_exit
        return self.returncode

    def kill(self) -> None:
        self._killed.set()


def _supervisor(pager: FakePager) -> PagerSupervisor:
    t0 = trio.current_time()
    return PagerSupervisor(pager, lambda: trio.current_time() - t0)


async def test_a_pager_that_never_attaches_is_retried_with_backoff_then_given_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pager = FakePager(lifetime=0.0, rc=1)
    sup = _supervisor(pager)
    with trio.fail_after(60):
        await sup.run()
    assert len(pager.starts) == MAX_FAILED_STARTS and sup.stopped
    gaps = [b[0] - a[0] for a, b in zip(pager.starts, pager.starts[1:], strict=False)]
    assert gaps == sorted(gaps) and gaps[0] < gaps[-1] <= 1.0 + 1e-9  # doubling, capped


async def test_killed_pager_restarts_at_once_and_the_armed_fault_rides_along(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pager = FakePager(lifetime=100.0, rc=0)
    sup = _supervisor(pager)
    crash = Fault(1.0, "crash", {"point": "after_write", "nth": 2})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await trio.sleep(1.0)
        sup.arm_next = crash
        sup.kill("arm_crash")
        await trio.sleep(1.0)
        assert len(pager.starts) == 2
        assert pager.starts[1][0] - 1.0 < 0.1  # restarted at once after a kill
        assert pager.starts[1][1] == {"XPEMU_FAULTS": "after_write@2"}
        assert sup.lives[0].cause == "sigkill:arm_crash"
        assert sup.lives[1].fault_kind == "crash" and sup.lives[1].spec == "after_write@2"
        # The armed pager dies on its own, by SIGKILL semantics: a crash point fired.
        pager.kill()
        await trio.sleep(0.5)
        assert sup.lives[1].cause == "crash_point"
        assert pager.starts[2][1] == {"XPEMU_FAULTS": ""}  # the next one is clean
        sup.stopped = True
        pager.kill()
    assert len(pager.starts) == 3


async def test_closed_gate_holds_the_restart(autojump_clock: trio.testing.MockClock) -> None:
    pager = FakePager(lifetime=100.0, rc=0)
    sup = _supervisor(pager)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await trio.sleep(1.0)
        sup.restart_gate = trio.Event()
        sup.kill("final_store_check")
        await trio.sleep(30.0)
        assert len(pager.starts) == 1 and not pager.running  # the store can be read now
        sup.restart_gate.set()
        await trio.sleep(0.5)
        assert len(pager.starts) == 2
        sup.stopped = True
        pager.kill()


async def test_an_attached_pager_that_dies_resets_the_count_of_failed_starts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Every life exits on its own after 1 s; every other one attached first. Without the
    # reset, MAX_FAILED_STARTS deaths would stop the supervisor; with it, it never does.
    pager = FakePager(lifetime=1.0, rc=1)
    sup = _supervisor(pager)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        for i in range(3 * MAX_FAILED_STARTS):
            await trio.sleep(0.5)
            if i % 2 == 0:
                sup.note_attached()
            await trio.sleep(0.6)
        assert not sup.stopped
        assert [life.attached for life in list(sup.lives)[:4]] == [True, False, True, False]
        assert all(life.cause == "exit:1" for life in sup.lives if life.rc is not None)
        sup.stopped = True
        pager.kill()


async def test_an_orphaned_ring_stops_the_restarts(autojump_clock: trio.testing.MockClock) -> None:
    orphaned = False
    pager = FakePager(lifetime=100.0, rc=0)
    t0 = trio.current_time()
    sup = PagerSupervisor(pager, lambda: trio.current_time() - t0, orphaned=lambda: orphaned)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            await trio.sleep(1.0)
            orphaned = True
            assert sup.kill("kill")
    assert sup.stopped and len(pager.starts) == 1
    assert not sup.kill("kill")  # nothing left running to kill
