"""The run directory of one `xpemu up`/`stress`: created, checked, and the children's argv in it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Final

from .errors import StackError
from .options import StackOptions

#: Longest Unix socket path (sun_path is 108 bytes with the terminating NUL).
MAX_SOCKET_PATH: Final = 107


def prepare_run_dir(run_dir: Path | None, *, use_proxy: bool) -> Path:
    """Create (or reuse) the run directory and check it is usable; StackError if not."""
    try:
        if run_dir is None:
            path = Path(tempfile.mkdtemp(prefix="xpemu-"))
        else:
            path = Path(run_dir).absolute()
            path.mkdir(parents=True, exist_ok=True)
        probe = path / ".xpemu-probe"
        probe.write_bytes(b"")
        probe.unlink()
        (path / "state").mkdir(exist_ok=True)
        if use_proxy:
            (path / "pager-net").mkdir(exist_ok=True)
    except OSError as exc:
        where = run_dir if run_dir is not None else tempfile.gettempdir()
        raise StackError(f"run directory {where} is not writable: {exc.strerror}") from None
    longest = path / ("pager-net/privcmd.sock" if use_proxy else "privcmd.sock")
    if len(os.fsencode(longest)) > MAX_SOCKET_PATH:
        raise StackError(f"run directory path too long for a Unix socket: {path}")
    for name in ("guest-report.json", "guest.shadow"):
        with contextlib.suppress(FileNotFoundError):
            (path / name).unlink()
    return path


def hv_argv(o: StackOptions, run_dir: Path) -> list[str]:
    """hv's command line: the domain the options describe, its sockets in `run_dir`."""
    argv = [
        *o.hv_cmd,
        "--run-dir",
        str(run_dir),
        "--nr-gfns",
        str(o.nr_gfns),
        "--vcpus",
        str(o.vcpus),
        "--ring-size",
        str(o.ring_size),
        "--ring-mode",
        o.ring_mode,
        "--target",
        str(o.effective_target),
    ]
    if o.host_frames is not None:
        argv += ["--host-frames", str(o.host_frames)]
    if o.record_trace is not None:
        argv += ["--record-trace", str(o.record_trace)]
    return argv


def pager_argv(o: StackOptions, run_dir: Path) -> list[str]:
    """The pager's command line: its store in `run_dir/state`, through the proxy if asked."""
    net = run_dir / ("pager-net" if o.use_proxy else "")
    argv = [
        *o.pager_cmd,
        "--run-dir",
        str(net),
        "--state-dir",
        str(run_dir / "state"),
        "--domid",
        "1",
        # Bounded retries of a refused hello: in xen mode a refused pager must give up.
        "--hello-timeout",
        "3",
    ]
    if o.policy:
        argv += ["--policy", o.policy]
    if o.reserve is not None:
        argv += ["--reserve", str(o.reserve)]
    return argv


def guest_argv(o: StackOptions, run_dir: Path) -> list[str]:
    """The guest's command line: its report and shadow land in `run_dir`."""
    argv = [
        *o.guest_cmd,
        "--run-dir",
        str(run_dir),
        "--domid",
        "1",
        "--vcpus",
        str(o.vcpus),
        "--pattern",
        o.pattern,
        "--seed",
        str(o.seed),
        "--write-ratio",
        str(o.write_ratio),
        "--stuck-after",
        str(o.stuck_after),
        "--fault-ms",
        str(o.fault_ms),
        "--balloon-every",
        str(o.balloon_every),
        "--report",
        str(run_dir / "guest-report.json"),
        "--shadow",
        str(run_dir / "guest.shadow"),
    ]
    # Without a duration the guest runs until the stack sends it SIGTERM.
    duration = o.guest_duration
    argv += ["--duration", str(duration if duration is not None else 10.0**9)]
    return argv
