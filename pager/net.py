"""Reaching hv: wait for its privcmd socket, so start order does not matter (§10)."""

from __future__ import annotations

import os
from typing import Final

import structlog
import trio

from .config import PagerError

log = structlog.get_logger("pager.net")

#: Longest pause between two attempts to reach a privcmd socket that is not there yet.
CONNECT_BACKOFF_MAX: Final = 0.5


async def connect_privcmd(run_dir: str | os.PathLike[str], max_wait: float) -> trio.SocketStream:
    """Connect to ``run_dir/privcmd.sock``, waiting up to `max_wait` s for hv to listen."""
    path = os.path.join(run_dir, "privcmd.sock")
    delay = 0.01
    last: OSError | None = None
    with trio.move_on_after(max_wait):
        while True:
            try:
                return await trio.open_unix_socket(path)
            except OSError as exc:  # not there yet, or a stale file nobody listens on
                if last is None:
                    log.info("pager.waiting_for_hv", path=path, error=str(exc))
                last = exc
            await trio.sleep(delay)
            delay = min(delay * 2, CONNECT_BACKOFF_MAX)
    raise PagerError(f"no hv listening on {path} after {max_wait:g} s ({last})")
