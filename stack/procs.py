"""Child processes of `xpemu`: started, logged to files, and always reaped.

Every child runs in its own session, so a Ctrl-C on the terminal reaches `xpemu` alone and
`xpemu` stops the children in the right order (guest, then pager, then hv). `ChildSet`
kills whatever is still running when its block exits, on every path (errors, signals,
cancellation), so no child outlives the command. If `xpemu` itself is SIGKILLed, no code of
its own runs: a guardian process (`guardian.py`) that holds a pidfd of every child stops
them within a few seconds.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import structlog
import trio

from transport.logs import ENV_LOG_FILE, ENV_LOG_MAX_BYTES

log = structlog.get_logger("stack.procs")

#: Seconds a child gets to exit after SIGTERM before it is SIGKILLed on teardown.
TEARDOWN_GRACE: Final = 3.0

#: Cap of each log file in the run directory (`<name>.log`, `xpemu.log`): past it, the file
#: becomes `<name>.log.1` (the older `.1` dropped), so a process keeps at most about twice
#: this on disk however long it runs. At the default level the busiest log (the guest's, a
#: progress line a second) grows ~1 MB an hour. `XPEMU_LOG_MAX_BYTES` in xpemu's
#: environment overrides it.
LOG_MAX_BYTES: Final = int(os.environ.get(ENV_LOG_MAX_BYTES) or 8 << 20)


class StartError(Exception):
    """A child could not be started or did not come up; the text is one line for the user."""


def last_line(path: Path, limit: int = 300) -> str:
    """The last non-empty line of a log file (what a failing child said last), shortened;
    from the rotated `<path>.1` when the file was just rotated."""
    lines: list[str] = []
    for p in (path, path.with_name(path.name + ".1")):
        try:
            with open(p, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 8192))
                text = f.read().decode(errors="replace")
        except OSError:
            continue
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if lines:
            break
    if not lines:
        return ""
    text = lines[-1].strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Guardian:
    """The guardian process of one ChildSet (see guardian.py): `watch` hands it a child."""

    def __init__(self) -> None:
        self.proc: trio.Process | None = None
        self._sock: socket.socket | None = None

    async def start(self, log_path: Path) -> None:
        """Start the guardian (its stderr to `log_path`, and only a crash would write
        there); a failure only logs (the children then lack this net)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        script = os.path.join(os.path.dirname(__file__), "guardian.py")
        try:
            with open(log_path, "ab") as err:  # noqa: ASYNC230 - a local file, instant
                self.proc = await trio.lowlevel.open_process(
                    [sys.executable, "-I", script, str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,
                )
        except OSError as exc:
            ours.close()
            log.warning("guardian.not_started", error=str(exc))
            return
        finally:
            theirs.close()
        ours.setblocking(False)  # a guardian that stopped reading must not block xpemu
        self._sock = ours
        log.info("guardian.started", pid=self.proc.pid)

    def watch(self, pid: int) -> None:
        """Give the guardian a pidfd of `pid`, a child not yet reaped."""
        if self._sock is None:
            return
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return  # already gone
        try:
            socket.send_fds(self._sock, [b"p"], [pidfd])
        except OSError as exc:
            log.warning("guardian.lost", error=str(exc))
            self._sock.close()
            self._sock = None
        finally:
            os.close(pidfd)

    async def stop(self) -> None:
        """Close our end (the guardian sees end-of-file, finds nothing alive) and reap it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.proc is not None:
            with trio.move_on_after(TEARDOWN_GRACE):
                await self.proc.wait()
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


class Child:
    """One child process: its stderr (JSON log lines) goes unchanged to `log_path`
    (`<name>.log`, which the child rotates at `LOG_MAX_BYTES`: see transport/logs.py), its
    stdout (a readable summary, if any) to `<name>.out`."""

    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, guardian: Guardian | None = None
    ) -> None:
        self.name = name
        self.guardian = guardian
        self.argv = list(argv)
        self.log_path = log_path
        self.proc: trio.Process | None = None
        self.starts = 0
        #: Set at teardown for a child that had already exited: its return code.
        self.died_on_its_own: int | None = None

    @property
    def pid(self) -> int | None:
        """The running process's pid, if any."""
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process has not been reaped."""
        return self.proc is not None and self.proc.returncode is None

    async def start(self, env: Mapping[str, str] | None = None) -> None:
        """Start (or restart) the process; StartError if it cannot be executed."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        full_env = dict(os.environ)
        full_env[ENV_LOG_FILE] = str(self.log_path)
        full_env[ENV_LOG_MAX_BYTES] = str(LOG_MAX_BYTES)
        if env:
            full_env.update(env)
        try:
            # Opened afresh for each incarnation (the last one may have rotated the log),
            # appended to, and closed here: the child holds its own copy.
            with (
                open(self.log_path, "ab") as err,  # noqa: ASYNC230 - a local file, instant
                open(self.log_path.with_suffix(".out"), "ab") as out,  # noqa: ASYNC230
            ):
                self.proc = await trio.lowlevel.open_process(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=full_env,
                    start_new_session=True,
                )
        except OSError as exc:
            raise StartError(f"cannot start {self.name} ({self.argv[0]}): {exc.strerror}") from None
        self.starts += 1
        if self.guardian is not None:
            self.guardian.watch(self.proc.pid)
        log.info("child.started", child=self.name, pid=self.proc.pid, start=self.starts)

    async def wait(self) -> int:
        """Wait for the process to exit; its return code (negative: killed by that signal)."""
        assert self.proc is not None
        return await self.proc.wait()

    def send_signal(self, signum: int) -> None:
        """Send a signal if the process still runs."""
        if self.running:
            assert self.proc is not None
            try:
                self.proc.send_signal(signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL, no questions asked."""
        self.send_signal(signal.SIGKILL)

    async def stop(self, grace: float = TEARDOWN_GRACE, signum: int = signal.SIGTERM) -> int | None:
        """Ask the process to exit, SIGKILL it after `grace` seconds; its return code."""
        if self.proc is None:
            return None
        if self.running:
            self.send_signal(signum)
            with trio.move_on_after(grace):
                return await self.proc.wait()
            log.warning("child.kill_after_grace", child=self.name, pid=self.proc.pid)
            self.kill()
        return await self.proc.wait()


class ChildSet:
    """The children of one `xpemu` run; `open_children` reaps them all on exit."""

    def __init__(self, log_dir: Path, guardian: Guardian | None = None) -> None:
        self.log_dir = log_dir
        self.guardian = guardian
        self.children: dict[str, Child] = {}

    def add(self, name: str, argv: Sequence[str]) -> Child:
        """Register a child whose log is `<log_dir>/<name>.log`."""
        child = Child(name, argv, self.log_dir / f"{name}.log", self.guardian)
        self.children[name] = child
        return child

    async def teardown(self) -> None:
        """Stop every child still running: SIGTERM, then SIGKILL after a grace period."""
        running = [c for c in self.children.values() if c.running]
        for c in self.children.values():
            if c.proc is not None and c not in running:
                c.died_on_its_own = c.proc.returncode
        if running:
            for c in running:
                c.send_signal(signal.SIGTERM)
            with trio.move_on_after(TEARDOWN_GRACE):
                for c in running:
                    await c.wait()
            for c in running:
                if c.running:
                    log.warning("child.kill_on_teardown", child=c.name, pid=c.pid)
                    c.kill()
            for c in running:
                await c.wait()


@asynccontextmanager
async def open_children(log_dir: Path) -> AsyncIterator[ChildSet]:
    """A ChildSet whose children are all stopped and reaped when the block exits, and
    stopped by its guardian if this process dies first."""
    guardian = Guardian()
    with trio.CancelScope(shield=True):
        await guardian.start(log_dir / "guardian.log")
    children = ChildSet(log_dir, guardian)
    try:
        yield children
    finally:
        with trio.CancelScope(shield=True):
            try:
                await children.teardown()
            finally:
                await guardian.stop()
