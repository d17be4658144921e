"""A framed connection over any trio Stream, with a single writer task.

`SocketStream.send_all` refuses concurrent senders, so every outgoing frame goes through
one bounded memory channel drained by one writer task: order is kept, and a peer that does
not read its replies fills the channel and is dropped instead of growing our memory.

Every stream takes the same code paths: while the writer is idle, a frame is first offered
to the stream's "take what you can now" (`try_send_some`, see `nowait_sender`) and only the
rest goes through the writer. A socket takes bytes straight into its buffer; a stream that
cannot take any without waiting (a memory stream) takes none, and the writer sends it all.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

import trio

from protocol import (
    CLOSED,
    MAX_QUEUED_FRAMES,
    NEED_DATA,
    FrameDecoder,
    encode_frame,
)

from .sockbuf import chunk_receiver, widen_send_buffer

#: Bytes asked per read of a stream that is not a socket (a socket is read into a buffer
#: of its own: transport/sockbuf.py): 64 KiB, under glibc's mmap threshold. CPython
#: allocates a buffer of this size for each read and shrinks it to what came. A whole
#: frame's worth (1 MiB, as before) made the heap creep: glibc raises its threshold to the
#: size of each large block freed, so from the second read on each 1 MiB buffer came from
#: the brk heap, shrunk in place around the frames still alive, and the next one needed
#: fresh contiguous heap: the pager's `[heap]` grew ~4 MB an hour at full load
#: (BENCHMARKS.md "Soak").
RECEIVE_SIZE: Final = 64 * 1024

#: Seconds the writer may take to flush queued frames (a last error reply) when closing.
FLUSH_TIMEOUT: Final = 2.0


class ConnectionClosed(Exception):
    """The peer closed the stream, it broke, or we dropped a peer that would not read."""


class Connection:
    """Messages in and out over one stream. Create it with `open_connection`."""

    def __init__(self, stream: trio.abc.Stream, *, max_queued: int = MAX_QUEUED_FRAMES) -> None:
        self.stream = stream
        self._decoder = FrameDecoder()
        self._send, self._queue = trio.open_memory_channel[bytes](max_queued)
        self._closed = False
        # Frames handed to the writer and not yet fully sent. When there are none, the
        # writer is idle and a frame may go straight to a socket's buffer (see send_nowait).
        self._unsent = 0
        self._try_send = nowait_sender(stream)
        self._receive_chunk = chunk_receiver(stream, RECEIVE_SIZE)
        self._corked: list[bytes] | None = None  # frames held by `cork`

    @property
    def closed(self) -> bool:
        """True once the stream broke, was closed, or the peer was dropped."""
        return self._closed

    async def receive(self) -> dict[str, Any]:
        """The next message; ConnectionClosed at the end, RemoteProtocolError on garbage."""
        while True:
            msg = self._decoder.next_message()
            if msg is CLOSED:
                raise ConnectionClosed("peer closed the connection")
            if msg is not NEED_DATA:
                return msg  # type: ignore[return-value]  # not a sentinel: a message
            try:
                data = await self._receive_chunk()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._closed = True
                raise ConnectionClosed(f"receive failed: {exc!r}") from None
            # bytes, bytearray or a view of the socket's receive buffer (transport/sockbuf.py),
            # which the next read reuses: borrowed, the decoder decodes the frames in it
            # where they lie and copies the start of a cut frame before asking for more.
            self._decoder.receive_data(data, borrowed=True)

    def receive_buffered(self) -> dict[str, Any] | None:
        """The next message if it is already complete in what was read, else None: never
        reads the stream (the end of the stream is reported by the next `receive`).
        RemoteProtocolError on garbage."""
        msg = self._decoder.next_message()
        if msg is NEED_DATA or msg is CLOSED:
            return None
        return msg  # type: ignore[return-value]  # not a sentinel: a message

    def cork(self) -> None:
        """Hold outgoing frames until `uncork`, which sends them as one write: the replies
        to a burst of requests wake the peer once. Only while the writer is idle: towards a
        peer that is behind, frames queue one by one, so the queue bound still counts them."""
        if self._corked is None and self._direct():
            self._corked = []

    def uncork(self) -> None:
        """Send what `cork` held (as `send_nowait` does); ConnectionClosed as it does."""
        frames, self._corked = self._corked, None
        if frames:
            self._send_frames_nowait(frames)

    def _direct(self) -> bool:
        # Nothing queued before a frame and the writer idle: the frame may go straight into
        # the stream (a socket's buffer), saving the writer task's wake-up (one scheduler
        # pass per message). Whatever the stream does not take goes through the writer, so
        # order is kept; and the queue being empty, that rest always fits in it.
        return self._unsent == 0

    def _queue_nowait(self, frame: bytes) -> None:
        try:
            self._send.send_nowait(frame)
        except trio.WouldBlock:
            self._closed = True
            self._send.close()
            raise ConnectionClosed("peer is not reading: outgoing queue full") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._closed = True
            raise ConnectionClosed("connection is closed") from None
        self._unsent += 1

    def send_nowait(self, msg: Mapping[str, Any]) -> None:
        """Queue a message without waiting; a peer with a full queue is dropped."""
        frame = encode_frame(msg)  # LocalProtocolError surfaces to the caller, unsent
        if self._corked is not None:
            if self._closed:
                raise ConnectionClosed("connection is closed")
            self._corked.append(frame)
            return
        self._send_frames_nowait([frame])

    def _send_frames_nowait(self, frames: list[bytes]) -> None:
        if self._closed:
            raise ConnectionClosed("connection is closed")
        if rest := self._write_now(frames):
            self._queue_nowait(rest)

    def _write_now(self, frames: list[bytes]) -> bytes:
        """What is left of `frames` (as one string) after writing what the stream takes at
        once while the writer is idle (nothing taken when the writer is busy). The frames
        go to a socket as they are, in one `writev`: no copy joins them first."""
        taken = self._try_send(frames) if self._direct() else 0
        for i, frame in enumerate(frames):
            if taken < len(frame):
                if not taken and len(frames) == i + 1:
                    return frame  # all of the last frame: no copy
                return b"".join([frame[taken:] if taken else frame, *frames[i + 1 :]])
            taken -= len(frame)
        return b""

    def can_send_now(self) -> bool:
        """Whether `send_now` would take a message at once (the writer idle, not corked)."""
        if self._closed:
            raise ConnectionClosed("connection is closed")
        return self._corked is None and self._direct()

    def send_now(self, *msgs: Mapping[str, Any]) -> None:
        """As `send`, from code that cannot wait; only when `can_send_now()` (an idle
        writer has an empty queue, so what the socket does not take always fits in it)."""
        if not self.can_send_now():
            raise RuntimeError("send_now while the writer is busy")
        self._send_frames_nowait(list(map(encode_frame, msgs)))

    async def send(self, *msgs: Mapping[str, Any]) -> None:
        """Send messages in order, waiting for room in the outgoing queue (never dropping
        the peer). Several messages go out as one write: one wake-up of the peer."""
        frame = b"".join(map(encode_frame, msgs))
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise ConnectionClosed("connection is closed")
        if self._corked is not None:  # after what is held, to keep the order
            self._corked.append(frame)
            return
        if self._direct():
            if rest := self._write_now([frame]):
                self._queue_nowait(rest)  # the queue is empty: this cannot block
            return
        self._unsent += 1  # before the await: the writer may take the frame at once
        try:
            await self._send.send(frame)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._unsent -= 1
            self._closed = True
            raise ConnectionClosed("connection is closed") from None
        except BaseException:  # cancelled while the queue was full: nothing was queued
            self._unsent -= 1
            raise

    async def _writer(self) -> None:
        try:
            async with self._queue:
                async for frame in self._queue:
                    await self.stream.send_all(frame)
                    self._unsent -= 1
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._closed = True

    def close_soon(self) -> None:
        """Stop accepting frames; the writer flushes what is queued, then the stream closes."""
        self._closed = True
        self._send.close()


def nowait_sender(stream: trio.abc.Stream) -> Callable[[list[bytes]], int]:
    """The stream's "send what you can now, without waiting": a function taking frames
    (a list of bytes) and returning how many bytes of them, from the first on, the stream
    took (0 to all). Only called while nothing is queued for the stream's `send_all`, so
    what it takes goes out in order.

    A `SocketStream` writes the frames into its non-blocking socket with one `writev`; a
    stream with a `try_send_some(data) -> int` method (such as a simulated network's) is
    offered them joined; any other stream takes nothing at once (its writer task sends
    everything)."""
    if isinstance(stream, trio.SocketStream):
        sock = stream.socket
        return lambda frames: _write_some(sock, frames)
    try_send_some = getattr(stream, "try_send_some", None)
    if callable(try_send_some):  # duck-typed: see docstring
        return lambda frames: int(try_send_some(b"".join(frames)))
    return _take_nothing


def _take_nothing(frames: list[bytes]) -> int:
    return 0


#: Buffers one `writev` (or `pwritev`) takes at most.
IOV_MAX: Final = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


def _write_some(sock: trio.socket.SocketType, frames: list[bytes]) -> int:
    """Bytes of `frames` a non-blocking socket takes at once, from the first on (0 on any
    error: the writer task retries the rest and meets, and reports, a real error itself)."""
    fd = sock.fileno()
    if fd < 0:  # closed: the number may belong to another file by now
        return 0
    try:
        if len(frames) == 1:
            return os.write(fd, frames[0])
        return os.writev(fd, frames[:IOV_MAX])
    except OSError:
        return 0


@asynccontextmanager
async def open_connection(
    stream: trio.abc.Stream, *, max_queued: int = MAX_QUEUED_FRAMES
) -> AsyncIterator[Connection]:
    """Run a Connection's writer for the duration of the block, then flush and close."""
    widen_send_buffer(stream)
    conn = Connection(stream, max_queued=max_queued)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn._writer)
            try:
                yield conn
            finally:
                conn.close_soon()
                nursery.cancel_scope.deadline = trio.current_time() + FLUSH_TIMEOUT
    except BaseExceptionGroup as group:
        raise _single(group) from None
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


def _single(group: BaseExceptionGroup) -> BaseException:
    """The nursery wraps the block's own exception: hand callers the exception itself."""
    if len(group.exceptions) == 1:
        inner = group.exceptions[0]
        return _single(inner) if isinstance(inner, BaseExceptionGroup) else inner
    return group


__all__ = [
    "FLUSH_TIMEOUT",
    "IOV_MAX",
    "RECEIVE_SIZE",
    "Connection",
    "ConnectionClosed",
    "nowait_sender",
    "open_connection",
]
