"""The lazy pass-through file system as its own process: `LazyDisk` served over FUSE.

Run by `stack/power.py` as ``python -m stack.lazyfs --backing DIR --mount DIR``; it mounts
DIR over FUSE (libfuse3 through `mfusepy`, ctypes only: nothing to compile, so installing
the package never fails where libfuse3 is missing; `pyfuse3` would need libfuse3-dev,
pkg-config and a C compiler) and serves the pager's state directory from `LazyDisk`
(stack/lazymodel.py: what is durable when).

Control: JSON lines on stdin, one JSON line answered on stdout each; the process says
``{"event": "ready"}`` once the kernel has initialised the mount.

- ``{"op": "cut", "harsh": bool, "seed": int}``: the power cut. The disk freezes (every
  later operation fails with EIO), the surviving writes reach the backing directory, and
  the answer counts what was lost; the controller then SIGKILLs this process.
- ``{"op": "trip", "after": int}``: aim the next cut. The write after `after` more is
  taken (unsynced) and its answer held until the cut, so the cut finds it in flight;
  ``stats`` says ``tripped`` once it came. ``{"op": "untrip"}`` stops aiming and says
  whether a write had tripped.
- ``{"op": "lie", "on": bool}``: syncs answer success without making anything durable.
- ``{"op": "flush"}``: a clean unmount's sync: everything becomes durable (even while lying).
- ``{"op": "stats"}``: counters.

End of stdin (the controller died) or SIGTERM: libfuse leaves its loop and unmounts.
FUSE runs single-threaded (``-s``): one operation at a time, so no request waits on
another; the control thread takes the same lock.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import threading
from typing import Any, Final

from .lazymodel import LazyDisk, Node

#: Mount options: hard_remove (an unlinked open file is not renamed to .fuse_hidden*,
#: which would be a journaled rename of its own), a name `mount` shows.
FSNAME: Final = "xpemu-lazyfs"

#: Longest a tripped write's answer is held for the cut (the controller cuts in ms).
HOLD_BOUND_S: Final = 30.0

#: FUSE_CAP_READDIRPLUS and FUSE_CAP_READDIRPLUS_AUTO (fuse_common.h).
READDIRPLUS: Final = 1 << 13
READDIRPLUS_AUTO: Final = 1 << 14


class LazyOps:
    """The mfusepy operations: paths and file handles onto `LazyDisk`."""

    # Times in nanoseconds (mfusepy's float seconds are deprecated). Paths are always
    # computed (no nullpath_ok): mfusepy's libfuse3 truncate passes the path, not the handle.
    use_ns = True

    def __init__(self, disk: LazyDisk) -> None:
        self.disk = disk
        self.handles: dict[int, Node] = {}
        self._next_fh = 1
        self.mounted = False

    def _handle(self, node: Node) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = node
        return fh

    def _node(self, path: str | None, fh: int | None) -> Node:
        if fh:
            node = self.handles.get(fh)
            if node is None:
                raise OSError(errno.EBADF, "bad handle")
            self.disk._check()
            return node
        if path is None:
            raise OSError(errno.EINVAL, "no path")
        return self.disk.lookup(path)

    # ---- the operations (mfusepy names and signatures) --------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        # No READDIRPLUS: libfuse3's high-level readdir fills it in a format the kernel
        # then rejects (EIO) on the next plain READDIR of the same directory.
        conn.want &= ~(READDIRPLUS | READDIRPLUS_AUTO)
        self.mounted = True
        _answer({"event": "ready", "pid": os.getpid()})

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, int]:
        with self.disk.lock:
            return self.disk.attrs(self._node(path, fh))

    def opendir(self, path: str) -> int:
        with self.disk.lock:
            return self._handle(self.disk.lookup(path))

    def readdir_with_offset(
        self, path: str | None, offset: int, fh: int
    ) -> list[tuple[str, dict[str, int], int]]:
        # Entries from `offset` on, each with the offset of the next: libfuse3 then asks
        # again from an offset instead of replaying a buffer it filled for READDIRPLUS to
        # a plain READDIR (which the kernel rejects as garbage, EIO).
        with self.disk.lock:
            node = self._node(path, fh)
            assert node.path is not None
            here = self.disk.attrs(node)
            entries = [(".", here), ("..", here)]
            for name in self.disk.listdir(node):
                child = self.disk.nodes[node.path.rstrip("/") + "/" + name]
                entries.append((name, self.disk.attrs(child)))
            return [(n, a, i + 1) for i, (n, a) in enumerate(entries) if i >= offset]

    def releasedir(self, path: str | None, fh: int) -> int:
        self.handles.pop(fh, None)
        return 0

    def open(self, path: str, flags: int) -> int:
        with self.disk.lock:
            return self._handle(self.disk.lookup(path))

    def create(self, path: str, mode: int, flags: int = 0) -> int:
        with self.disk.lock:
            return self._handle(self.disk.create(path, mode))

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        with self.disk.lock:
            return self.disk.read(self._node(path, fh), size, offset)

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        with self.disk.lock:
            n = self.disk.write(self._node(path, fh), offset, data)
            hold, self.disk.hold_answer = self.disk.hold_answer, False
        if hold:
            # The tripping write: its writer hears nothing until the power is gone (the
            # controller SIGKILLs the pager first, so it never runs on). Bounded, in case
            # the controller is gone too.
            self.disk.power_gone.wait(HOLD_BOUND_S)
            raise OSError(errno.EIO, "power lost")
        return n

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        with self.disk.lock:
            self.disk.truncate(self._node(path, fh), length)
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        with self.disk.lock:
            self.disk.fsync(self._node(path, fh))
        return 0

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        with self.disk.lock:
            self._node(path, fh)
            self.disk.fsyncdir()
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        return 0  # close() makes nothing durable

    def release(self, path: str | None, fh: int) -> int:
        self.handles.pop(fh, None)
        return 0

    def unlink(self, path: str) -> int:
        with self.disk.lock:
            self.disk.unlink(path)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        with self.disk.lock:
            self.disk.create(path, mode, is_dir=True)
        return 0

    def rmdir(self, path: str) -> int:
        with self.disk.lock:
            self.disk.unlink(path, is_dir=True)
        return 0

    def rename(self, old: str, new: str) -> int:
        with self.disk.lock:
            self.disk.rename(old, new)
        return 0

    def chmod(self, path: str | None, mode: int) -> int:
        with self.disk.lock:
            self.disk.chmod(self._node(path, None), mode)
        return 0

    def chown(self, path: str | None, uid: int, gid: int) -> int:
        return 0  # owners are not part of what a power cut tests (SQLite tries to set them)

    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        return 0  # times are not part of what a power cut tests

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self.disk.backing)
        keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree")
        return {k: getattr(st, k) for k in (*keys, "f_namemax")}


_out_lock = threading.Lock()


def _answer(obj: dict[str, Any]) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def _control(disk: LazyDisk) -> None:
    """The control thread: commands on stdin; at its end, stop the file system."""
    # Signals go to the main thread, where libfuse's handlers end its loop.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    for line in sys.stdin:
        try:
            cmd = json.loads(line)
            with disk.lock:
                if cmd["op"] == "cut":
                    reply = disk.cut(harsh=bool(cmd["harsh"]), seed=int(cmd["seed"]))
                elif cmd["op"] == "lie":
                    disk.lying = bool(cmd["on"])
                    reply = {"lying": disk.lying}
                elif cmd["op"] == "flush":
                    disk.flush_all()
                    reply = dict(disk.counts)
                elif cmd["op"] == "trip":
                    disk.arm_trip(int(cmd["after"]))
                    reply = {"armed": True}
                elif cmd["op"] == "untrip":
                    reply = {"tripped": disk.disarm_trip()}
                elif cmd["op"] == "stats":
                    reply = dict(
                        disk.counts, lying=disk.lying, frozen=disk.frozen, tripped=disk.tripped
                    )
                else:
                    raise ValueError(f"unknown op {cmd['op']!r}")
            _answer({"ok": True, **reply})
        except (ValueError, KeyError, TypeError, OSError) as exc:
            _answer({"ok": False, "error": str(exc)})
    disk.power_gone.set()  # no cut will come: a held answer goes now
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    """Mount and serve until SIGTERM or the end of stdin; 2 if the mount fails."""
    p = argparse.ArgumentParser(prog="python -m stack.lazyfs")
    p.add_argument("--backing", required=True, help="directory holding the durable bytes")
    p.add_argument("--mount", required=True, help="where to mount the lazy view of it")
    args = p.parse_args(argv)
    try:
        import mfusepy
    except (ImportError, OSError) as exc:  # OSError: libfuse3 itself is missing
        print(f"lazyfs: cannot load libfuse3 through mfusepy: {exc}", file=sys.stderr)
        return 2
    disk = LazyDisk(args.backing)
    threading.Thread(target=_control, args=(disk,), daemon=True, name="control").start()
    ops = LazyOps(disk)
    try:
        mfusepy.FUSE(
            ops, args.mount, foreground=True, nothreads=True, fsname=FSNAME, hard_remove=True
        )
    except RuntimeError as exc:
        # After a mount, libfuse also reports the signal that ended its loop as an error.
        if not ops.mounted:
            print(f"lazyfs: cannot mount {args.mount} (libfuse error {exc})", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
