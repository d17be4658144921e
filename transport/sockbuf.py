"""Socket buffers: the kernel's send buffer wide enough for a batch, and one receive buffer
per connection that every read lands in.

Sending. A Unix stream socket's send buffer bounds what one `send` can hand to the kernel (the
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

Receiving. `receive_some(n)` makes CPython allocate an n-byte buffer for every read and
shrink it to what came: reads of 1 MiB made the heap creep (see `RECEIVE_SIZE`), and
reads of 64 KiB take a 64-page `map` reply (262 KiB) in five system calls and five
allocations. A socket is instead read with `recv_into` into one RECEIVE_BUFFER-byte
buffer the connection keeps (an anonymous mapping of its own: the heap never sees it,
and only the pages reads have reached are resident), which the frame decoder copies
from before the next read, as it copied the bytes `receive_some` returned. Measured at
batch 64 (40,000 pages out and back in, 2 x 4 alternated runs twice, the machine loaded
by other work): the pager's main thread 14.75-15.75 -> 12.9-13.8 us of CPU per page
paged out, hv's 10.1-10.5 -> 9.2-10.0 per page paged in. Other streams (memory streams,
test wrappers) keep `receive_some(RECEIVE_SIZE)`; either way the decoder gets the same
bytes.
"""

from __future__ import annotations

import contextlib
import mmap
import socket
from collections.abc import Awaitable, Callable
from typing import Final

import trio

#: Bytes asked for each socket's send buffer (the kernel grants twice this, see above).
SEND_BUFFER: Final = 1024 * 1024


def widen_send_buffer(stream: trio.abc.Stream) -> None:
    """Ask for a SEND_BUFFER send buffer if `stream` is a Unix socket (`open_connection`
    does, for every connection); nothing otherwise (a memory stream, or a socket that
    refuses: the default buffer then serves)."""
    if not isinstance(stream, trio.SocketStream):
        return
    sock = stream.socket
    if sock.family != socket.AF_UNIX:
        return
    with contextlib.suppress(OSError):  # refused: the default works, with more partial sends
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


#: Bytes of a socket connection's receive buffer: a 64-page reply and the small frames
#: behind it in one read.
RECEIVE_BUFFER: Final = 1024 * 1024


def chunk_receiver(
    stream: trio.abc.Stream, size: int
) -> Callable[[], Awaitable[bytes | bytearray | memoryview]]:
    """A function that reads the next chunk of `stream` (empty at its end): for a socket,
    into a RECEIVE_BUFFER the caller must be done with before the next read (see above);
    for any other stream, `receive_some(size)`."""
    if not isinstance(stream, trio.SocketStream):
        return lambda: stream.receive_some(size)
    sock = stream.socket
    # An anonymous mapping, not a bytearray (which would be zero-filled, all resident).
    view = memoryview(mmap.mmap(-1, RECEIVE_BUFFER))

    async def receive() -> memoryview:
        return view[: await sock.recv_into(view)]

    return receive


__all__ = ["RECEIVE_BUFFER", "SEND_BUFFER", "chunk_receiver", "widen_send_buffer"]
