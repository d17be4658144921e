"""Nothing orphaned: a SIGKILLed `xpemu` leaves no child running (its guardian stops them).

The children are found by PID and held by pidfd before `xpemu` dies, so a PID reused by an
unrelated process later cannot fool the check; their exit is awaited on the pidfds (an
event), within a bound.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import trio
from stack_helpers import XPEMU, processes_mentioning

#: The guardian's grace (2 s) plus slack for a loaded machine.
STOP_BOUND_S = 10.0


async def _start_up(run_dir: Path) -> trio.Process:
    args = ["up", "--no-live", "--run-dir", str(run_dir), "--nr-gfns", "512", "--duration", "120"]
    proc = await trio.lowlevel.open_process(
        [*XPEMU, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    buf = bytearray()
    while b"workload]" not in buf:  # the guest is running: every child is up
        data = await proc.stdout.receive_some(4096)
        assert data, f"xpemu ended before the workload: {bytes(buf)!r}"
        buf.extend(data)
    return proc


def _guardian_of(pid: int) -> int:
    kids: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        kids += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    found = [k for k in kids if b"guardian.py" in Path(f"/proc/{k}/cmdline").read_bytes()]
    assert len(found) == 1, kids
    return found[0]


def _children(run_dir: Path) -> dict[str, int]:
    """hv, pager and guest of the run, by the module each runs, and their PIDs."""
    out = {}
    for pid, cmd in processes_mentioning(str(run_dir)):
        for name in ("hv", "pager", "guest"):
            if f" -m {name} " in cmd:
                out[name] = pid
    assert set(out) == {"hv", "pager", "guest"}, out
    return out


async def _exited(pidfd: int) -> None:
    await trio.lowlevel.wait_readable(pidfd)  # a pidfd polls readable once its process exits


async def test_sigkilled_xpemu_leaves_no_child_alive(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    pidfds: dict[str, int] = {}
    with trio.fail_after(90):
        proc = await _start_up(run_dir)
        try:
            pids = {**_children(run_dir), "guardian": _guardian_of(proc.pid)}
            pidfds = {name: os.pidfd_open(pid) for name, pid in pids.items()}
            proc.kill()
            assert await proc.wait() == -signal.SIGKILL
            t0 = trio.current_time()
            with trio.fail_after(STOP_BOUND_S):
                for fd in pidfds.values():
                    await _exited(fd)
            assert trio.current_time() - t0 < STOP_BOUND_S
            assert processes_mentioning(str(run_dir)) == []
        finally:
            _cleanup(proc, pidfds)


async def test_the_check_sees_orphans_when_the_guardian_is_gone_too(tmp_path: Path) -> None:
    # The planted bug: no guardian. Killed with xpemu, the children must then be found alive.
    run_dir = tmp_path / "run"
    pidfds: dict[str, int] = {}
    with trio.fail_after(90):
        proc = await _start_up(run_dir)
        try:
            pidfds = {name: os.pidfd_open(pid) for name, pid in _children(run_dir).items()}
            guardian = os.pidfd_open(_guardian_of(proc.pid))
            signal.pidfd_send_signal(guardian, signal.SIGKILL)
            await _exited(guardian)
            os.close(guardian)
            proc.kill()
            await proc.wait()
            with trio.move_on_after(STOP_BOUND_S / 2) as waited:
                await _exited(pidfds["hv"])
            assert waited.cancelled_caught, "hv stopped without a guardian"
            assert len(processes_mentioning(str(run_dir))) == 3
        finally:
            _cleanup(proc, pidfds)


def _cleanup(proc: trio.Process, pidfds: dict[str, int]) -> None:
    if proc.returncode is None:
        proc.kill()
    for fd in pidfds.values():
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        os.close(fd)


async def test_sigkilled_soak_bench_takes_its_xpemu_up_along(tmp_path: Path) -> None:
    """`xpemu bench --soak` runs `xpemu up` under a guardian of its own: killed, it leaves
    nothing running (it used to leave the stack running out its duration)."""
    work = tmp_path / "work"
    work.mkdir()
    pidfds: dict[str, int] = {}
    with trio.fail_after(120):
        proc = await trio.lowlevel.open_process(
            [*XPEMU, "bench", "--soak", "5", "--work-dir", str(work)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert proc.stdout is not None
            buf = bytearray()
            while b"soak: 5 min" not in buf:  # every process of the stack is up
                data = await proc.stdout.receive_some(4096)
                assert data, f"the soak ended at start-up: {bytes(buf)!r}"
                buf.extend(data)
            (run_dir,) = work.glob("soak-*/run")
            pids = _children(run_dir)
            up = [pid for pid, cmd in processes_mentioning(str(run_dir)) if " -m stack up " in cmd]
            assert len(up) == 1, up
            pidfds = {name: os.pidfd_open(pid) for name, pid in {**pids, "up": up[0]}.items()}
            proc.kill()
            assert await proc.wait() == -signal.SIGKILL
            with trio.fail_after(2 * STOP_BOUND_S):  # two guardians, one after the other
                for fd in pidfds.values():
                    await _exited(fd)
            assert processes_mentioning(str(run_dir)) == []
        finally:
            _cleanup(proc, pidfds)
