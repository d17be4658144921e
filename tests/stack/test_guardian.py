"""The guardian on its own: it stops what it holds at end-of-file (SIGKILL for a child
that ignores SIGTERM) and forgets children that exit, so its pidfds stay bounded."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import trio

import stack.guardian as guardian_mod
from stack.procs import Guardian

#: Says "ready" once SIGTERM is ignored (before that, SIGTERM alone would stop it).
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(600)"
)


async def test_end_of_file_stops_even_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    g = Guardian()
    with trio.fail_after(30):
        await g.start(tmp_path / "guardian.log")
        assert g.proc is not None
        child = await trio.lowlevel.open_process(
            [sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE
        )
        try:
            assert child.stdout is not None
            said = b""
            while b"\n" not in said:
                said += await child.stdout.receive_some()
            assert said == b"ready\n"
            g.watch(child.pid)
            await g.stop()  # our end closed: the guardian stops what it holds, then exits
            assert await child.wait() == -signal.SIGKILL
            assert g.proc.returncode == 0
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
            assert child.stdout is not None
            await child.stdout.aclose()
    assert (tmp_path / "guardian.log").read_bytes() == b""


def test_exited_children_are_forgotten() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    guard = guardian_mod.Guard(theirs)
    with ours, theirs:
        for _ in range(30):
            short = subprocess.Popen([sys.executable, "-c", "pass"])
            pidfd = os.pidfd_open(short.pid)  # before it is reaped, as procs.Guardian does
            socket.send_fds(ours, [b"p"], [pidfd])
            os.close(pidfd)
            short.wait()
        # Each step waits (bounded) for the socket or an exit; every pidfd is readable now.
        for _ in range(200):
            assert guard.step(timeout_ms=5000)
            if guard.received == 30 and not guard.held:
                break
        assert guard.received == 30 and guard.held == set()
        ours.close()
        assert guard.step(timeout_ms=5000) is False  # end-of-file: nothing left to stop


def test_usage_error_is_one_line() -> None:
    r = subprocess.run(
        [sys.executable, "-I", guardian_mod.__file__, "x"], capture_output=True, check=False
    )
    assert r.returncode == 2 and r.stderr.count(b"\n") == 1 and b"Traceback" not in r.stderr
