"""Page contents as a pure function of (seed, gfn, version): the guest stores no bytes.

A page written at version v holds `page_bytes(seed, gfn, v)`: the SHAKE-128 stream of the
key (seed, gfn, v), 4096 bytes long. Every byte depends on every part of the key and on
its position, so a page of another gfn, an older version, a shifted copy or a torn write
all fail the comparison. Measured on the dev machine: ~12 us per page (`xpemu` accesses
cost ~100-300 us each over the socket), so generating on every check is affordable.

The last `CACHED_PAGES` pages asked for are kept (512 KiB): a write's page is read back
soon after, while its gfn is hot, and the check of a read needs the same page again.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from typing import Final

from protocol import PAGE_SIZE

#: A page the guest never wrote, or that came back from a balloon-in: zero-filled.
ZERO_PAGE: Final = bytes(PAGE_SIZE)

_KEY = struct.Struct("<QQQ")


#: Pages kept by `page_bytes` (most recently used): 512 KiB.
CACHED_PAGES: Final = 128


@functools.lru_cache(maxsize=CACHED_PAGES)
def page_bytes(seed: int, gfn: int, version: int) -> bytes:
    """The 4096 bytes a gfn holds after its `version`-th write (version >= 1)."""
    key = _KEY.pack(seed & 0xFFFF_FFFF_FFFF_FFFF, gfn, version)
    return hashlib.shake_128(key).digest(PAGE_SIZE)
