"""The simulated network: in-memory byte-stream connections that can be cut mid-frame.

A `Link` joins two `SimStream` ends (trio `Stream`s) with one pipe per direction, each
byte arriving `latency` seconds of trio time after it was sent (so work takes simulated
time, and faults scheduled in time fall in the middle of it). A cut,
armed with `Link.cut_next(direction, fraction)`, lets through only the first `fraction` of
the next `send_all` going that way (frames go out whole in one `send_all`, so the peer sees
a frame broken off in its middle) and then breaks the link: both ends' sends fail
(`BrokenResourceError`) and both ends read what was already in flight, then end of stream,
as a Unix socket reset by a dying proxy does. Nothing here reads a clock or a random
source: where and when to cut is the fault plan's choice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

import trio

from .clock import SimClock

#: The two directions of a link: from its first end (the client) and towards it.
DIRECTIONS: Final = ("to_server", "to_client")

Emit = Callable[..., None]


def _noop(event: str, **fields: Any) -> None:
    """The default event sink: nothing."""


class Clock(Protocol):
    """What a pipe needs of a clock: the time now."""

    def current_time(self) -> float: ...


class _TrioTime:
    """`trio.current_time()`, for a link built before its run started."""

    @staticmethod
    def current_time() -> float:
        return trio.current_time()


_TRIO_TIME: Final = _TrioTime()


class _Pipe:
    """One direction: bytes in flight (each chunk readable from its arrival time), bytes
    arrived and not yet read, and whether more can come."""

    __slots__ = (
        "buf", "clock", "cut_at", "eof", "flight", "latency", "readable", "sent", "waiter",
    )  # fmt: skip

    def __init__(self, latency: float, clock: Clock) -> None:
        self.latency = latency
        self.clock = clock  # the run's: one call per reading of the time, not three
        self.flight: deque[tuple[float, bytes]] = deque()
        self.buf = bytearray()
        self.eof = False  # no byte will ever be added
        self.readable = trio.lowlevel.ParkingLot()
        self.cut_at: float | None = None  # fraction of the next send_all to let through
        self.sent = 0  # bytes that went through, in total
        # The reader waiting for a put under a SimClock (`wait_put`): [task, its timer
        # entry once a put has told the clock when to wake it, else None].
        self.waiter: list[Any] | None = None

    def close(self) -> None:
        self.eof = True
        self.readable.unpark_all()
        w = self.waiter
        if w is not None and w[1] is None:  # (with a timer set it wakes then, as before)
            self.waiter = None
            trio.lowlevel.reschedule(w[0])

    def put(self, data: bytes) -> None:
        if self.latency:
            at = self.clock.current_time() + self.latency
            self.flight.append((at, data))
            w = self.waiter
            if w is not None and w[1] is None:  # wake the reader when this chunk arrives
                w[1] = self.clock.wake_at(w[0], at)  # type: ignore[attr-defined]
        else:
            self.buf += data
        self.sent += len(data)
        self.readable.unpark_all()

    async def wait_put(self) -> None:
        """Wait, under a SimClock with latency, until the first chunk put from now on
        arrives (or the pipe closes): one wake-up per chunk, at its arrival, where parking
        on `readable` woke the reader at the put only to wait on a timer for the arrival."""
        w: list[Any] = [trio.lowlevel.current_task(), None]
        self.waiter = w

        def abort(_: Any) -> trio.lowlevel.Abort:
            if w[1] is not None:
                w[1][2] = None  # drop its timer
            if self.waiter is w:
                self.waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        if self.waiter is w:
            self.waiter = None

    def arrived(self) -> float | None:
        """Move what has arrived into `buf`; the arrival time of the next chunk, if any."""
        flight = self.flight
        if not flight:
            return None
        now = self.clock.current_time()
        while flight:
            at, data = flight[0]
            if at > now:
                return at
            flight.popleft()
            self.buf += data
        return None


class SimStream(trio.abc.Stream):
    """One end of a `Link`."""

    def __init__(self, link: Link, out: _Pipe, inp: _Pipe, direction: str) -> None:
        self._link = link
        self._out = out
        self._in = inp
        self._direction = direction
        self._closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Append `data` to the pipe (never blocks); BrokenResourceError once cut."""
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("this end is closed")
        if self._out.eof:
            raise trio.BrokenResourceError("the connection was cut or the peer closed it")
        data = bytes(data)
        if self._put(data) < len(data):
            raise trio.BrokenResourceError("the connection was cut")

    def try_send_some(self, data: bytes) -> int:
        """Take what a non-blocking socket write would take now, without waiting: all of
        `data` (a pipe never fills), or, inside an armed cut, the part before the cut (the
        link then breaks); 0 once this end is closed or the link is gone. A `Connection`
        offers each frame here first while its writer is idle, as it writes into an idle
        socket's buffer (`transport.connection.nowait_sender`): the same path as
        production, and no writer wake-up per frame. The writer sends whatever is not
        taken and meets the error itself."""
        if self._closed or self._out.eof:
            return 0
        return self._put(bytes(data))

    def _put(self, data: bytes) -> int:
        """Put `data` on the pipe, cut where a cut is armed; the bytes that went."""
        out = self._out
        if out.cut_at is None:
            out.put(data)
            return len(data)
        keep = int(len(data) * out.cut_at)
        out.put(data[:keep])
        self._link._break(self._direction, keep, len(data))
        return keep

    async def wait_send_all_might_not_block(self) -> None:
        """A send never blocks here."""
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to `max_bytes` in-flight bytes; b"" at the end of the stream."""
        if self._closed:
            raise trio.ClosedResourceError("this end is closed")
        pipe = self._in
        waited = False
        while True:
            next_at = pipe.arrived()
            if pipe.buf or (pipe.eof and next_at is None):
                break
            waited = True
            if next_at is not None:
                clock = pipe.clock
                if type(clock) is SimClock:
                    await clock.wait_until(next_at)
                else:
                    await trio.sleep_until(next_at)
            elif pipe.latency and type(pipe.clock) is SimClock and pipe.waiter is None:
                await pipe.wait_put()
            else:
                await pipe.readable.park()
            if self._closed:
                raise trio.ClosedResourceError("this end is closed")
        if not waited:
            await trio.lowlevel.checkpoint()
        buf = pipe.buf
        if max_bytes is None or max_bytes >= len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:max_bytes])
            del buf[:max_bytes]
        return data

    async def aclose(self) -> None:
        """Close this end: the peer reads what is in flight, then end of stream."""
        self._closed = True
        self._out.close()
        self._in.close()  # nobody reads any more: the peer's sends fail (EPIPE)
        await trio.lowlevel.checkpoint()


class Link:
    """A connection between two ends; `ends` is (client end, server end)."""

    def __init__(self, name: str, emit: Emit = _noop, *, latency: float = 0.0) -> None:
        self.name = name
        self.emit = emit
        try:
            clock: Clock = trio.lowlevel.current_clock()
        except RuntimeError:  # built outside a trio run (no latency needs no clock)
            clock = _TRIO_TIME
        up, down = _Pipe(latency, clock), _Pipe(latency, clock)
        self._pipes = {"to_server": up, "to_client": down}
        self.ends = (
            SimStream(self, up, down, "to_server"),
            SimStream(self, down, up, "to_client"),
        )
        self.cut = False

    def cut_next(self, direction: str, fraction: float) -> None:
        """Cut the link inside the next `send_all` going `direction` (after `fraction` of it)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
        if not 0.0 <= fraction < 1.0:
            raise ValueError("fraction must be in [0, 1)")
        self._pipes[direction].cut_at = fraction

    def cut_now(self) -> None:
        """Break the link at once, between frames."""
        self._break("both", 0, 0)

    def _break(self, direction: str, kept: int, size: int) -> None:
        if not self.cut:
            self.cut = True
            self.emit("net.cut", link=self.name, direction=direction, kept=kept, of=size)
        for pipe in self._pipes.values():
            pipe.cut_at = None
            pipe.close()

    @property
    def bytes_sent(self) -> dict[str, int]:
        """Bytes that went through each way."""
        return {d: p.sent for d, p in self._pipes.items()}


__all__ = ["DIRECTIONS", "Link", "SimStream"]
