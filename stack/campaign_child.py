"""A campaign's sim seeds, each in a child forked from the Dask worker: one result dict per
seed, hung ones too.

A **sim** seed is pure Python in one thread, so nothing inside the worker can stop one that
livelocks (`signal.alarm` reaches the main thread only, which is the worker's event loop,
and an exception thrown into a thread would land wherever the sim is, with process-wide
state patched). So each block runs its seeds in a child forked from the worker, one after
another: forked, not spawned, so the child runs exactly the code the worker has (a Dask
`WorkerPlugin` or preload that patches a module reaches it), and it costs a few
milliseconds (os.fork, not `multiprocessing`: Dask's workers are daemonic processes, which
may not start one).

- The bound is **CPU seconds** (`ITIMER_PROF`, armed per seed in the child: the kernel
  kills it with SIGPROF): a livelocked seed burns CPU, and a loaded machine stretches
  wall time (a 2.7 CPU-second seed took 19 s of wall time here with ~6 runnable
  processes per core), so a wall bound would turn load into false timeouts.
- A child that sleeps (uses no CPU and waits for none) for `BLOCKED_S` while it holds a
  seed is blocked: the sim has nothing to wait for, so what holds it is the fork, not the
  seed (a lock another thread of the worker held at the fork, which no one in the child
  will release; a CI run met one, under heavy load). Its Python stack is taken
  (faulthandler, on SIGABRT) and the seed runs once more in a new child; blocked twice, or
  answering nothing within `WALL_FACTOR` times the bound in wall seconds (where there is
  no `/proc` to tell sleeping from starved), its verdict is `timeout`. The next seed of
  the block runs in a new child.
- The child dies with the worker (PR_SET_PDEATHSIG; the forking thread waits on it for
  its whole life), and never returns into the worker's code (`os._exit`).
"""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing
import os
import resource
import signal
import tempfile
import time
import warnings
from multiprocessing.connection import Connection
from typing import IO, Any, Final

#: A child that answers nothing is stopped after this many times the CPU bound, in wall
#: seconds (the bound where `/proc` cannot tell a blocked child, module doc): generous, as
#: a niced seed on this loaded machine got 1 CPU second in 3-10+ wall.
WALL_FACTOR: Final = 30.0
#: Seconds a child holding a seed may sleep (no CPU used, none waited for) before it is
#: taken for blocked (module doc). A sim seed never sleeps: it is pure Python, no I/O.
BLOCKED_S: Final = 5.0
#: Seconds the parent gives a blocked child to write its stack and die (SIGABRT).
_DUMP_S: Final = 2.0
#: Lines of a blocked child's stack kept in its result (the innermost frames).
_STACK_LINES: Final = 6
#: The exit status of a child whose own code failed (not the seed's: that is a verdict).
_CHILD_BROKE: Final = 70


def result(seed: int, verdict: str, worker: str, failure: str | None = None) -> dict[str, Any]:
    """A result row with nothing measured (a timeout, an error) for `seed`."""
    return {
        "seed": seed,
        "verdict": verdict,
        "duration_s": 0.0,
        "cpu_s": 0.0,
        "faults": {},
        "crash_points": {},
        "trace_hash": "",
        "worker": worker,
        "failures": [failure] if failure else [],
        "lost_gfns": 0,
    }


def sim_seed(seed: int, options: dict[str, Any]) -> dict[str, Any]:
    """Run one sim seed here (in the child); its result row, worker left blank."""
    import sim  # looked up per call: a patched `sim.run_seed` is the one that runs

    t0, c0 = time.perf_counter(), time.process_time()
    try:
        r = sim.run_seed(seed, scenario=options["scenario"], ring_mode=options["ring_mode"])
    except Exception as exc:  # the sim itself broke (it reports failed checks, not raises)
        return result(seed, "error", "", f"the sim raised {type(exc).__name__}: {exc}")
    return {
        "seed": seed,
        "verdict": "passed" if r.ok else ("stalled" if r.stalled else "failed"),
        "duration_s": round(time.perf_counter() - t0, 4),
        "cpu_s": round(time.process_time() - c0, 4),
        "faults": dict(sorted(r.fired.items())),
        "crash_points": dict(sorted(r.crash_points.items())),
        "trace_hash": r.trace_hash,
        "worker": "",
        "failures": list(r.failures),
        "lost_gfns": r.lost,
    }


class SimChild:
    """A forked child that runs sim seeds one at a time, each under a CPU bound."""

    def __init__(self, options: dict[str, Any], cpu_limit: float) -> None:
        self.options = options
        self.cpu_limit = cpu_limit
        self.pid: int | None = None
        self.conn: Connection | None = None
        self.stacks: IO[bytes] | None = None  # the child's faulthandler file

    def _start(self) -> None:
        # The sim's modules are imported here, in the worker, once: a child forked before
        # that imported them itself, 0.24 CPU s a block (0.05 a seed at 5 seeds a block,
        # a quarter of a small seed; measured with `distributed` imported, as in a worker).
        import sim  # noqa: F401

        ours, theirs = multiprocessing.Pipe()
        stacks = tempfile.TemporaryFile()
        parent = os.getpid()
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork in a process with threads: the child runs only
            # the sim (one thread) and leaves with os._exit, never into the worker's code.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child
            code = _CHILD_BROKE
            try:
                ours.close()
                _child_main(theirs, self.options, self.cpu_limit, parent, stacks.fileno())
                code = 0
            finally:
                os._exit(code)
        theirs.close()
        self.pid, self.conn, self.stacks = pid, ours, stacks

    def run(self, seed: int, worker: str) -> dict[str, Any]:
        """Seed `seed`'s result: the child's, or `timeout`/`error` if it gave none. A child
        that blocked is replaced and the seed run once more (module doc); the result then
        says so (`blocked`: the first child's stack)."""
        t0 = time.perf_counter()
        blocked: list[str] = []
        while True:
            out, how = self._once(seed, worker)
            if how != "blocked":
                break
            blocked.append(self._stop_blocked())
            if len(blocked) == 2:
                why = f"two children: each slept {BLOCKED_S:g} s holding it (blocked)"
                out = result(seed, "timeout", worker, f"no verdict within {why}; {blocked[1]}")
                break
        if how == "wall":
            self._stop(kill=True)
            why = f"{time.perf_counter() - t0:.0f} wall seconds ({WALL_FACTOR:g}x the bound)"
            out = result(seed, "timeout", worker, f"no verdict within {why}; child killed")
        elif how == "died":
            code = self._stop(kill=False)
            if code == -signal.SIGPROF:
                why = f"its bound of {self.cpu_limit:g} CPU seconds (a livelock?)"
                out = result(seed, "timeout", worker, f"no verdict within {why}; child killed")
            else:
                why = _how(code)
                out = result(seed, "error", worker, f"the seed's child process died ({why})")
        if how != "answered":
            out["duration_s"] = round(time.perf_counter() - t0, 4)
        if blocked:
            out["blocked"] = blocked[0]
        return out

    def _once(self, seed: int, worker: str) -> tuple[dict[str, Any], str]:
        """Hand `seed` to the child (started if need be): its result and "answered", or an
        empty result and why there is none: "died", "blocked" or "wall" (the child is
        then left as it is, for the caller to stop)."""
        if self.pid is None:
            self._start()
        assert self.conn is not None and self.pid is not None
        try:
            self.conn.send(seed)
            how = _wait_answer(self.conn, self.pid, WALL_FACTOR * self.cpu_limit)
            if how == "answered":
                out: dict[str, Any] = self.conn.recv()
                out["worker"] = worker
                return out, how
        except (EOFError, OSError):  # the child died: its status says how
            how = "died"
        return {}, how

    def _stop_blocked(self) -> str:
        """Stop a blocked child: SIGABRT makes its faulthandler write its Python stack
        before it dies (SIGKILL after `_DUMP_S`); the innermost frames of that stack."""
        assert self.pid is not None and self.conn is not None and self.stacks is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGABRT)
        with contextlib.suppress(OSError):
            self.conn.poll(_DUMP_S)  # end of file once it is dead
        self.stacks.seek(0)
        text = self.stacks.read().decode(errors="replace")
        self._stop(kill=True)
        frames = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("File ")]
        return " <- ".join(frames[:_STACK_LINES]) or "no stack written"

    def _stop(self, *, kill: bool) -> int:
        """Reap the child (SIGKILLed first if `kill`): its exit code."""
        assert self.pid is not None and self.conn is not None
        pid, self.pid = self.pid, None
        self.conn.close()
        self.conn = None
        self._close_stacks()
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Blocking: a child that closed its pipe by dying may not be a zombie quite yet.
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        """End the child (it leaves at the end of its pipe) and reap it."""
        if self.pid is None:
            return
        assert self.conn is not None
        pid, self.pid = self.pid, None
        self.conn.close()  # the child reads EOF and exits
        self.conn = None
        self._close_stacks()
        os.waitpid(pid, 0)

    def _close_stacks(self) -> None:
        if self.stacks is not None:
            self.stacks.close()
            self.stacks = None


def _schedstat(pid: int) -> tuple[int, int] | None:
    """The child's CPU time and run-queue wait (ns, Linux's schedstat), or None."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            on_cpu, waited, _ = f.read().split()
        return int(on_cpu), int(waited)
    except (OSError, ValueError):
        return None


def _wait_answer(conn: Connection, pid: int, wall: float) -> str:
    """Wait for the child's answer: "answered" (also its end of file: it died), "blocked"
    (asleep `BLOCKED_S` with the seed: no CPU time used, none waited for), or "wall"
    (nothing within `wall` seconds)."""
    deadline = time.monotonic() + wall
    last = _schedstat(pid)
    still_since = time.monotonic()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "wall"
        if conn.poll(min(left, 1.0)):
            return "answered"
        now = _schedstat(pid)
        if now is None or now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= BLOCKED_S:
            return "blocked"


def _how(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit status {code}"


def _die_with_parent(parent: int) -> None:
    """SIGKILL this child when the thread that forked it goes (Linux); see the docstring."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent went before prctl took effect
        os._exit(0)


def _child_main(
    conn: Connection, options: dict[str, Any], cpu_limit: float, parent: int, stacks: int
) -> None:
    _die_with_parent(parent)
    signal.signal(signal.SIGPROF, signal.SIG_DFL)  # the kernel's action: terminate
    # A stack on SIGABRT (a blocked child, see SimChild) or a crash, then the default
    # action; no core file.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    faulthandler.enable(file=stacks, all_threads=False)
    while True:
        try:
            seed = conn.recv()
        except EOFError:  # the worker closed the pipe: the block is over
            return
        signal.setitimer(signal.ITIMER_PROF, cpu_limit)
        out = sim_seed(seed, options)
        signal.setitimer(signal.ITIMER_PROF, 0)
        try:
            conn.send(out)
        except OSError:  # the worker is gone
            return


__all__ = ["BLOCKED_S", "WALL_FACTOR", "SimChild", "result", "sim_seed"]
