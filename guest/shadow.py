"""The guest's shadow of its memory: one version and one state per gfn, in flat arrays.

A dict of objects would cost hundreds of bytes per gfn; two arrays cost five. What a gfn
must hold follows from its entry alone (see `content.page_bytes`).
"""

from __future__ import annotations

import enum
import json
import sys
from array import array
from pathlib import Path
from typing import Final

from .content import ZERO_PAGE, page_bytes

_MAGIC: Final = b"XPEMU-SHADOW 1\n"


class GfnState(enum.IntEnum):
    """What the guest expects of a gfn."""

    ZERO = 0  #: never written since boot or since the last balloon-in: zeros
    DATA = 1  #: holds page_bytes(seed, gfn, version)
    INVALID = 2  #: ballooned out: every access must answer EFAULT
    LOST = 3  #: hv answered EIO (`broken`): the pager lost it; counted once, then expected


class Shadow:
    """Versions (uint32, monotonic per gfn, never reused) and states (one byte) per gfn."""

    __slots__ = ("nr_gfns", "seed", "states", "versions")

    def __init__(self, nr_gfns: int, seed: int) -> None:
        self.nr_gfns = nr_gfns
        self.seed = seed
        self.versions = array("I", bytes(4 * nr_gfns))
        self.states = array("B", bytes(nr_gfns))

    def state(self, gfn: int) -> GfnState:
        """The state of `gfn`."""
        return GfnState(self.states[gfn])

    def expected(self, gfn: int) -> bytes | None:
        """The page `gfn` must hold now, or None when an access must fail (INVALID, LOST)."""
        state = self.states[gfn]
        if state == GfnState.ZERO:
            return ZERO_PAGE
        if state == GfnState.DATA:
            return page_bytes(self.seed, gfn, self.versions[gfn])
        return None

    def wrote(self, gfn: int, version: int) -> None:
        """A write of `version` completed."""
        self.versions[gfn] = version
        self.states[gfn] = GfnState.DATA

    def ballooned_out(self, gfn: int) -> None:
        """decrease_reservation freed the gfn."""
        self.states[gfn] = GfnState.INVALID

    def ballooned_in(self, gfn: int) -> None:
        """increase_reservation gave the gfn a zeroed frame; the version keeps counting so a
        stale copy of an older write can never pass for the new contents."""
        self.states[gfn] = GfnState.ZERO

    def lost(self, gfn: int) -> None:
        """hv answered EIO: the page is broken."""
        self.states[gfn] = GfnState.LOST

    def counts(self) -> dict[str, int]:
        """How many gfns are in each state."""
        out = dict.fromkeys((s.name.lower() for s in GfnState), 0)
        for s in GfnState:
            out[s.name.lower()] = self.states.count(s)
        return out

    def nbytes(self) -> int:
        """Bytes of memory the shadow's arrays hold."""
        return self.versions.itemsize * len(self.versions) + len(self.states)

    def save(self, path: str | Path) -> None:
        """Write the shadow to `path` (atomically: a reader never sees half a file)."""
        header = {"nr_gfns": self.nr_gfns, "seed": self.seed, "byteorder": sys.byteorder}
        tmp = Path(f"{path}.tmp")
        with open(tmp, "wb") as f:
            f.write(_MAGIC)
            f.write(json.dumps(header).encode() + b"\n")
            f.write(self.versions.tobytes())
            f.write(self.states.tobytes())
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> Shadow:
        """Read a shadow written by `save`; ValueError if the file is not one."""
        with open(path, "rb") as f:
            if f.readline() != _MAGIC:
                raise ValueError(f"{path}: not a guest shadow file")
            header = json.loads(f.readline())
            shadow = cls(int(header["nr_gfns"]), int(header["seed"]))
            n = shadow.nr_gfns
            versions = f.read(4 * n)
            states = f.read(n)
        if len(versions) != 4 * n or len(states) != n:
            raise ValueError(f"{path}: truncated shadow file")
        shadow.versions = array("I", versions)
        shadow.states = array("B", states)
        if header.get("byteorder", sys.byteorder) != sys.byteorder:
            shadow.versions.byteswap()
        return shadow
