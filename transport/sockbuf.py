"""The kernel send buffer of every Unix socket this project opens: wide enough for a batch.

A Unix stream socket's send buffer bounds what one `send` can hand to the kernel (the
receiver's buffer plays no part for AF_UNIX streams). At Linux's default, 208 KiB, a
64-page `map` reply (262 KiB) does not fit: hv's writer sends part of it, waits for the
socket to become writable again, sends the rest, and does that for every batch while the
pager pipelines eight or more of them. Measured at batch 64 (40,000 pages paged out,
`strace -c` of hv): 1,364 partial sends and 2,625 `epoll_wait`s at the default, against
672 whole writes and 608 `epoll_wait`s with a 2 MiB buffer; hv's CPU per page 11.0-16.2 ->
9.2-11.8 µs in alternated runs. The same holds for the pager's `prep` of a batch
(the pages travel the other way).

The kernel caps the request at `net.core.wmem_max` (208 KiB on a default Linux; raise it
with `sysctl -w net.core.wmem_max=4194304`) and doubles what it grants for its own
bookkeeping, so asking 1 MiB gives a 2 MiB buffer where allowed and the default elsewhere:
the same code, only slower where the system keeps the cap low. A peer that does not read
still fills the buffer and then the connection's bounded queue (`MAX_QUEUED_FRAMES`),
and is dropped; the buffer is the kernel's memory, not the process's.
"""

from __future__ import annotations

import socket
from typing import Final

import trio

#: Bytes asked for each socket's send buffer (the kernel grants twice this, see above).
SEND_BUFFER: Final = 1024 * 1024


def widen_send_buffer(stream: trio.abc.Stream) -> None:
    """Ask for a SEND_BUFFER send buffer if `stream` is a Unix socket; nothing otherwise
    (a memory stream, or a socket that refuses: the default buffer then serves)."""
    if not isinstance(stream, trio.SocketStream):
        return
    sock = stream.socket
    if sock.family != socket.AF_UNIX:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    except OSError:
        pass  # the default buffer works, only with more partial sends


__all__ = ["SEND_BUFFER", "widen_send_buffer"]
