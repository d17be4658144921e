"""What the lazy file system keeps, what a sync makes durable, and what a power cut leaves.

The model behind `stack/lazyfs.py` (the FUSE process), with no FUSE in it, so its semantics
are unit-tested directly. Durable bytes live in a real *backing* directory (a plain mirror:
durable names holding durable bytes); everything else lives in this process's memory, as a
page cache and a file-system journal would.

- **Data.** A write or truncate changes the live file at once (every later read sees it) and
  is queued on its file. `fsync`/`fdatasync` of the file applies the queue to the durable
  copy (and `fdatasync`s the backing file). A process dying loses nothing: the queue lives
  here, not in the process.
- **Names.** create, mkdir, unlink, rmdir and rename change the live namespace at once and
  are appended to one ordered journal. Only a directory fsync commits the journal (all of
  it, in order, as a journal commit does); a file's fsync makes its bytes durable but not
  its name. That is harsher than ext4 with ``data=ordered``, where any fsync commits the
  running transaction and a timer commits it every 5 s; it is what POSIX promises.
- **Power cut.** Gentle: every queued write and every uncommitted journal entry is lost.
  Harsh (seeded): a random prefix of the journal survives (a journal replays in order),
  then a random subset of the queued writes of files whose name survived, in their order,
  one of them torn: only the whole 512-byte sectors of a prefix of it reach the disk.
- **A lying disk.** While `lying`, syncs answer success and make nothing durable.

Bytes of a file whose creation is not yet committed but that was synced stay in memory (its
durable image) until the creation commits. Only files and directories exist (no links).
"""

from __future__ import annotations

import errno
import os
import random
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pager.disk import SECTOR


def _err(code: int, path: str | None = None) -> OSError:
    return OSError(code, os.strerror(code), path)


@dataclass
class Node:
    """A file or directory of the live namespace (and maybe of the durable one)."""

    ino: int
    is_dir: bool
    path: str | None  # live path; None once unlinked
    mode: int
    durable: str | None = None  # its path in the durable namespace (the backing directory)
    image: bytearray | None = None  # durable bytes of a file with no durable name yet
    data: bytearray | None = None  # live bytes (loaded from the backing file on first use)
    pending: list[tuple[int, bytes | None]] = field(default_factory=list)  # (offset, data)
    # A pending (size, None) entry is a truncate.
    mtime_ns: int = field(default_factory=time.time_ns)


class LazyDisk:
    """The whole file system state; every method takes the one lock (FUSE runs one thread
    here, but a control thread asks for cuts and lies concurrently)."""

    def __init__(self, backing: str | os.PathLike[str]) -> None:
        self.backing = Path(backing)
        self.lock = threading.Lock()
        self.nodes: dict[str, Node] = {}  # live path -> node
        self.dnames: dict[str, Node] = {}  # durable path -> node
        self.journal: list[tuple[Any, ...]] = []  # uncommitted namespace ops, in order
        self.lying = False
        self.frozen = False  # after a cut: nothing changes any more (every op fails)
        self.counts = {"writes": 0, "syncs": 0, "dir_syncs": 0, "lied_syncs": 0}
        # An aimed cut (`arm_trip`): writes still to let through before the one that trips.
        self.trip_after: int | None = None
        self.tripped = False  # a write tripped: the cut falls while it is in flight
        self.hold_answer = False  # the tripping write's answer waits for the cut
        self.power_gone = threading.Event()  # set by `cut`: held answers may go (EIO)
        self._next_ino = 1
        self._load()

    # ---- loading ------------------------------------------------------------------

    def _new(self, path: str, *, is_dir: bool, mode: int) -> Node:
        node = Node(self._next_ino, is_dir, path, mode)
        self._next_ino += 1
        return node

    def _load(self) -> None:
        root = self._new("/", is_dir=True, mode=stat.S_IFDIR | 0o755)
        root.durable = "/"
        self.nodes["/"] = self.dnames["/"] = root
        for dirpath, dirnames, filenames in os.walk(self.backing):
            rel = "/" + os.path.relpath(dirpath, self.backing)
            rel = "/" if rel == "/." else rel
            for name, is_dir in [(d, True) for d in dirnames] + [(f, False) for f in filenames]:
                path = rel.rstrip("/") + "/" + name
                st = os.lstat(self.backing / path.lstrip("/"))
                node = self._new(path, is_dir=is_dir, mode=st.st_mode)
                node.durable = path
                node.mtime_ns = st.st_mtime_ns
                self.nodes[path] = self.dnames[path] = node

    def _real(self, durable: str) -> Path:
        return self.backing / durable.lstrip("/")

    def live(self, node: Node) -> bytearray:
        """The live bytes of a file."""
        if node.data is None:
            if node.durable is not None:
                node.data = bytearray(self._real(node.durable).read_bytes())
            else:
                node.data = bytearray(node.image or b"")
        return node.data

    # ---- lookups --------------------------------------------------------------------

    def _check(self) -> None:
        if self.frozen:
            raise _err(errno.EIO)

    def lookup(self, path: str) -> Node:
        """The live node at `path`; ENOENT if none."""
        self._check()
        node = self.nodes.get(path)
        if node is None:
            raise _err(errno.ENOENT, path)
        return node

    def attrs(self, node: Node) -> dict[str, int]:
        """stat fields of a node."""
        size = 0
        if not node.is_dir:
            if node.data is not None:
                size = len(node.data)
            elif node.durable is not None:
                size = self._real(node.durable).stat().st_size
            else:
                size = len(node.image or b"")
        return {
            "st_mode": node.mode,
            "st_nlink": 2 if node.is_dir else (1 if node.path else 0),
            "st_size": size,
            "st_ino": node.ino,
            "st_mtime": node.mtime_ns,
            "st_ctime": node.mtime_ns,
            "st_atime": node.mtime_ns,
            "st_uid": os.getuid(),
            "st_gid": os.getgid(),
        }

    def listdir(self, node: Node) -> list[str]:
        """Names in a live directory."""
        self._check()
        assert node.path is not None
        prefix = node.path.rstrip("/") + "/"
        return sorted(
            p[len(prefix) :]
            for p in self.nodes
            if p.startswith(prefix) and p != prefix and "/" not in p[len(prefix) :]
        )

    def _parent(self, path: str) -> Node:
        parent = self.nodes.get(path.rsplit("/", 1)[0] or "/")
        if parent is None:
            raise _err(errno.ENOENT, path)
        if not parent.is_dir:
            raise _err(errno.ENOTDIR, path)
        return parent

    # ---- namespace (journaled) ------------------------------------------------------

    def create(self, path: str, mode: int, *, is_dir: bool = False) -> Node:
        """A new empty file (or directory) at `path`; EEXIST if the name is taken."""
        self._check()
        self._parent(path)
        if path in self.nodes:
            raise _err(errno.EEXIST, path)
        kind = stat.S_IFDIR if is_dir else stat.S_IFREG
        node = self._new(path, is_dir=is_dir, mode=kind | (mode & 0o7777))
        if not is_dir:
            node.data = bytearray()
            node.image = bytearray()
        self.nodes[path] = node
        self.journal.append(("mkdir" if is_dir else "create", path, node))
        return node

    def unlink(self, path: str, *, is_dir: bool = False) -> None:
        """Remove a file (or an empty directory)."""
        node = self.lookup(path)
        if is_dir and not node.is_dir:
            raise _err(errno.ENOTDIR, path)
        if not is_dir and node.is_dir:
            raise _err(errno.EISDIR, path)
        if is_dir and self.listdir(node):
            raise _err(errno.ENOTEMPTY, path)
        del self.nodes[path]
        node.path = None
        self.journal.append(("rmdir" if is_dir else "unlink", path, node))

    def rename(self, src: str, dst: str) -> None:
        """Move `src` to `dst`, replacing a file (or an empty directory) there."""
        node = self.lookup(src)
        self._parent(dst)
        if dst == src:
            return
        if dst.startswith(src.rstrip("/") + "/"):
            raise _err(errno.EINVAL, dst)
        old = self.nodes.get(dst)
        if old is not None:
            if old.is_dir and not node.is_dir:
                raise _err(errno.EISDIR, dst)
            if node.is_dir and not old.is_dir:
                raise _err(errno.ENOTDIR, dst)
            if old.is_dir and self.listdir(old):
                raise _err(errno.ENOTEMPTY, dst)
            old.path = None
        _rekey(self.nodes, src, dst, live=True)
        self.journal.append(("rename", src, dst, node))

    def chmod(self, node: Node, mode: int) -> None:
        """Permission bits (live only: nothing in this stack depends on them surviving)."""
        self._check()
        node.mode = (node.mode & ~0o7777) | (mode & 0o7777)

    # ---- data -----------------------------------------------------------------------

    def read(self, node: Node, size: int, offset: int) -> bytes:
        """Live bytes: unsynced writes included, as a page cache serves them."""
        self._check()
        return bytes(self.live(node)[offset : offset + size])

    def write(self, node: Node, offset: int, data: bytes) -> int:
        """Write to the live file and queue it for the next sync."""
        self._check()
        _apply(self.live(node), offset, data)
        node.pending.append((offset, bytes(data)))
        node.mtime_ns = time.time_ns()
        self.counts["writes"] += 1
        if self.trip_after is not None:
            if self.trip_after == 0:
                self.trip_after, self.tripped, self.hold_answer = None, True, True
            else:
                self.trip_after -= 1
        return len(data)

    def arm_trip(self, after: int) -> None:
        """Aim the next cut: the write after `after` more is kept unsynced and its answer
        held until the cut (`LazyOps.write`), so the cut finds it in flight."""
        self._check()
        self.trip_after, self.tripped = after, False

    def disarm_trip(self) -> bool:
        """Stop aiming; True if a write had already tripped."""
        self.trip_after = None
        return self.tripped

    def truncate(self, node: Node, size: int) -> None:
        """Set the live size and queue it for the next sync."""
        self._check()
        _apply(self.live(node), size, None)
        node.pending.append((size, None))
        node.mtime_ns = time.time_ns()

    # ---- syncs ----------------------------------------------------------------------

    def fsync(self, node: Node) -> None:
        """Make the file's queued writes durable (not its name: see `fsyncdir`)."""
        self._check()
        self.counts["syncs"] += 1
        if self.lying:
            self.counts["lied_syncs"] += 1
            return
        if not node.is_dir:
            self._make_durable(node, node.pending)
        else:
            self._commit(len(self.journal))

    def fsyncdir(self) -> None:
        """Commit the namespace journal: every create, rename and remove so far is durable."""
        self._check()
        self.counts["dir_syncs"] += 1
        if self.lying:
            self.counts["lied_syncs"] += 1
            return
        self._commit(len(self.journal))

    def flush_all(self) -> None:
        """What a clean unmount does: every name and every write becomes durable."""
        self._check()
        self._commit(len(self.journal))
        for node in self._all_nodes():
            self._make_durable(node, node.pending)

    def _make_durable(self, node: Node, ops: list[tuple[int, bytes | None]]) -> None:
        node.pending = []
        if not ops:
            return
        if node.durable is not None:
            real = self._real(node.durable)
            fd = os.open(real, os.O_RDWR)
            try:
                for offset, data in ops:
                    if data is None:
                        os.ftruncate(fd, offset)
                    else:
                        os.pwrite(fd, data, offset)
                os.fdatasync(fd)
            finally:
                os.close(fd)
        elif node.image is not None:
            for offset, data in ops:
                _apply(node.image, offset, data)

    def _commit(self, upto: int) -> None:
        """Replay the first `upto` journal entries onto the backing directory."""
        for op in self.journal[:upto]:
            kind = op[0]
            if kind in ("create", "mkdir"):
                _, path, node = op
                if kind == "mkdir":
                    self._real(path).mkdir()
                else:
                    self._real(path).write_bytes(bytes(node.image or b""))
                    node.image = None
                node.durable = path
                self.dnames[path] = node
            elif kind in ("unlink", "rmdir"):
                _, path, node = op
                if kind == "rmdir":
                    self._real(path).rmdir()
                else:
                    self._real(path).unlink()
                self.dnames.pop(path)
                node.durable = None
            else:
                _, src, dst, node = op
                replaced = self.dnames.get(dst)
                if replaced is not None and replaced is not node:
                    replaced.durable = None
                os.rename(self._real(src), self._real(dst))
                _rekey(self.dnames, src, dst, live=False)
        if upto:
            fd = os.open(self.backing, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        del self.journal[:upto]

    # ---- power ----------------------------------------------------------------------

    def cut(self, *, harsh: bool, seed: int) -> dict[str, Any]:
        """Power loss: freeze, keep what the disk would hold, and say what was lost."""
        rng = random.Random(seed)
        self.frozen = True
        self.power_gone.set()  # (the held answer goes once the lock is released)
        meta = len(self.journal)
        kept_meta = rng.randint(0, meta) if harsh else 0
        self._commit(kept_meta)
        queued = [
            (node, i, op)
            for node in sorted(self._all_nodes(), key=lambda n: n.ino)
            for i, op in enumerate(node.pending)
        ]
        kept = [q for q in queued if harsh and q[0].durable is not None and rng.random() < 0.5]
        tear = None
        tearable = [q for q in kept if q[2][1] is not None and _boundaries(*q[2])]
        if tearable:
            tear = rng.choice(tearable)
        for node in {q[0].ino: q[0] for q in kept}.values():
            ops = []
            for q in kept:
                if q[0] is not node:
                    continue
                offset, data = q[2]
                if q is tear:
                    assert data is not None
                    cut_at = rng.choice(_boundaries(offset, data))
                    data = data[: cut_at - offset]
                ops.append((offset, data))
            self._make_durable(node, ops)
        return {
            "harsh": harsh,
            "lying": self.lying,
            "unsynced_writes": len(queued),
            "writes_lost": len(queued) - len(kept),
            "writes_kept": len(kept),
            "writes_torn": 1 if tear is not None else 0,
            "meta_ops_unsynced": meta,
            "meta_ops_lost": meta - kept_meta,
            "lied_syncs": self.counts["lied_syncs"],  # over this mount's life
            "aimed": self.tripped,
        }

    def _all_nodes(self) -> list[Node]:
        seen = {n.ino: n for n in self.nodes.values()}
        for op in self.journal:
            seen.setdefault(op[-1].ino, op[-1])
        for n in self.dnames.values():
            seen.setdefault(n.ino, n)
        return list(seen.values())


def _apply(buf: bytearray, offset: int, data: bytes | None) -> None:
    """One queued op on a byte image: a write (zero-filling a hole) or a truncate."""
    if data is None:
        if offset < len(buf):
            del buf[offset:]
        else:
            buf.extend(bytes(offset - len(buf)))
        return
    if offset > len(buf):
        buf.extend(bytes(offset - len(buf)))
    buf[offset : offset + len(data)] = data


def _boundaries(offset: int, data: bytes | None) -> list[int]:
    """512-byte boundaries strictly inside a write: where a power cut can tear it."""
    if data is None:
        return []
    first = (offset // SECTOR + 1) * SECTOR
    return list(range(first, offset + len(data), SECTOR))


def _rekey(table: dict[str, Node], src: str, dst: str, *, live: bool) -> None:
    """Move `src` and everything under it to `dst` in a path -> node table."""
    moved = {p: n for p, n in table.items() if p == src or p.startswith(src.rstrip("/") + "/")}
    for p in moved:
        del table[p]
    for p, n in moved.items():
        new = dst + p[len(src) :]
        table[new] = n
        if live:
            n.path = new
        else:
            n.durable = new
