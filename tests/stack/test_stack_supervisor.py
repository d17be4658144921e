"""The pager supervisor's restart logic under the mock clock, with a stand-in child.

Real-process behaviour is in test_stack_e2e.py; here the timing rules are pinned down:
restart at once after a kill, back off when a pager dies without attaching, give up after
MAX_FAILED_STARTS, arm the next start with a scheduled fault, hold restarts while the
gate is closed.
"""

from __future__ import annotations

import signal
from pathlib import Path

import trio

from stack.harness import MAX_FAILED_STARTS, Stack, StackOptions
from stack.schedule import Fault


class FakePager:
    """Duck-types `stack.procs.Child`: each start lives `lifetime` seconds then exits `rc`."""

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


def _stack(pager: FakePager) -> Stack:
    stack = Stack(StackOptions(), lambda _line: None)
    stack.t0 = trio.current_time()
    stack.pager = pager  # type: ignore[assignment]
    return stack


async def test_a_pager_that_never_attaches_is_retried_with_backoff_then_given_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pager = FakePager(lifetime=0.0, rc=1)
    stack = _stack(pager)
    with trio.fail_after(60):
        await stack._pager_supervisor()
    assert len(pager.starts) == MAX_FAILED_STARTS and stack.pager_stop
    gaps = [b[0] - a[0] for a, b in zip(pager.starts, pager.starts[1:], strict=False)]
    assert gaps == sorted(gaps) and gaps[0] < gaps[-1] <= 1.0 + 1e-9  # doubling, capped


async def test_killed_pager_restarts_at_once_and_the_armed_fault_rides_along(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pager = FakePager(lifetime=100.0, rc=0)
    stack = _stack(pager)
    crash = Fault(1.0, "crash", {"point": "after_write", "nth": 2})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stack._pager_supervisor)
        await trio.sleep(1.0)
        stack.arm_next = crash
        stack._kill_pager("arm_crash")
        await trio.sleep(1.0)
        assert len(pager.starts) == 2
        assert pager.starts[1][0] - 1.0 < 0.1  # restarted at once after a kill
        assert pager.starts[1][1] == {"XPEMU_FAULTS": "after_write@2"}
        assert stack.lives[0].cause == "sigkill:arm_crash"
        assert stack.lives[1].fault_kind == "crash" and stack.lives[1].spec == "after_write@2"
        # The armed pager dies on its own, by SIGKILL semantics: a crash point fired.
        pager.kill()
        await trio.sleep(0.5)
        assert stack.lives[1].cause == "crash_point"
        assert pager.starts[2][1] == {"XPEMU_FAULTS": ""}  # the next one is clean
        stack.pager_stop = True
        pager.kill()
    assert len(pager.starts) == 3


async def test_closed_gate_holds_the_restart(autojump_clock: trio.testing.MockClock) -> None:
    pager = FakePager(lifetime=100.0, rc=0)
    stack = _stack(pager)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stack._pager_supervisor)
        await trio.sleep(1.0)
        stack.restart_gate = trio.Event()
        stack._kill_pager("final_store_check")
        await trio.sleep(30.0)
        assert len(pager.starts) == 1 and not pager.running  # the store can be read now
        stack.restart_gate.set()
        await trio.sleep(0.5)
        assert len(pager.starts) == 2
        stack.pager_stop = True
        pager.kill()
