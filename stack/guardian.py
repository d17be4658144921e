"""The guardian: stops `xpemu`'s children when `xpemu` itself dies without tearing down.

`xpemu` starts one guardian per run (`procs.open_children`) and keeps one end of a
SOCK_SEQPACKET socket pair; the guardian holds the other. For every child it starts,
`xpemu` opens a pidfd (before it can reap the child, so the pidfd names that very process,
whatever happens to its PID later) and sends it over the socket (SCM_RIGHTS). When the
socket reads end-of-file, `xpemu` is gone: the kernel closes a dead process's sockets, even
after SIGKILL. The guardian then sends SIGTERM to every child still alive, waits up to
`GRACE_S`, and SIGKILLs the rest. A child that exits earlier makes its pidfd readable and
is forgotten at once, so the guardian holds at most as many pidfds as there are children
alive (the pager may be restarted thousands of times in a long stress run).

Why not the others: PR_SET_PDEATHSIG fires when the *thread* that forked dies, and trio
starts children from worker threads it retires when idle, which would kill children at
random; a pipe the children watch needs code in every child (and a `--hv-cmd` of the
user's own would not have it). The guardian works for any command.

It is run as a script (`python -I path/to/guardian.py FD`), stdlib only, so it starts in a
few milliseconds and costs a few MB, without importing the `stack` package.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time

#: Seconds the children get after SIGTERM before SIGKILL.
GRACE_S = 2.0

#: Bytes of the one-byte messages that carry a pidfd, and pidfds per message at most.
_MSG = 16
_MAX_FDS = 8


def _signal(pidfd: int, signum: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signum)
    except ProcessLookupError:
        pass  # exited (maybe not yet reaped): nothing to stop


def stop_all(pidfds: set[int], grace: float = GRACE_S) -> None:
    """SIGTERM every process, SIGKILL those still alive after `grace` seconds."""
    for fd in pidfds:
        _signal(fd, signal.SIGTERM)
    alive = set(pidfds)
    deadline = time.monotonic() + grace
    poller = select.poll()
    for fd in alive:
        poller.register(fd, select.POLLIN)
    while alive and (left := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(left * 1e3):
            poller.unregister(fd)
            alive.discard(fd)
    for fd in alive:
        _signal(fd, signal.SIGKILL)


class Guard:
    """The guardian's state: the pidfds held, and the socket that brings them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.held: set[int] = set()
        self.received = 0
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)

    def step(self, timeout_ms: float | None = None) -> bool:
        """Handle what is ready within `timeout_ms` (None: wait); False once the socket
        read end-of-file and every held child was stopped."""
        for fd, _ in self._poller.poll(timeout_ms):
            if fd != self.sock.fileno():
                self._poller.unregister(fd)  # that child exited: forget it
                self.held.discard(fd)
                os.close(fd)
                continue
            try:
                msg, fds, _flags, _addr = socket.recv_fds(self.sock, _MSG, _MAX_FDS)
            except ConnectionResetError:
                msg, fds = b"", []
            if not msg and not fds:
                stop_all(self.held)
                return False
            for pidfd in fds:
                self.received += 1
                self.held.add(pidfd)
                self._poller.register(pidfd, select.POLLIN)
        return True


def main(argv: list[str]) -> int:
    """`guardian.py FD`: FD is this process's end of the socket pair."""
    if len(argv) != 1 or not argv[0].isdigit():
        print("guardian.py: error: usage: guardian.py FD", file=sys.stderr)
        return 2
    # A Ctrl-C on the terminal is for `xpemu`, which stops the children in order itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with socket.socket(fileno=int(argv[0])) as sock:
        guard = Guard(sock)
        while guard.step():
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
