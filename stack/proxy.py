"""A Unix-socket proxy between the pager and hv's `privcmd.sock` that cuts frames in half.

The pager is given a run directory whose `privcmd.sock` is this proxy's socket; every byte
is relayed unchanged until a cut is armed. Then the next frame that starts in the armed
direction is relayed only up to a point strictly inside it (at least one byte of the frame
and at least one byte short of its end) and both connections are closed: the receiver sees
a truncated frame and then EOF, exactly what a dying peer or a broken link leaves behind.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
import trio

from protocol import LENGTH_PREFIX
from transport import serve_unix

log = structlog.get_logger("stack.proxy")

#: Bytes read per relay step.
CHUNK: Final = 1 << 16

_LEN = struct.Struct(">I")


class FrameTracker:
    """Follows frame boundaries in one direction of a byte stream (PROTOCOL.md §2)."""

    def __init__(self) -> None:
        self.pos = 0  # bytes seen so far
        self._header = bytearray()
        self._left = 0  # bytes of the current frame's body still to come
        self._frame_start = 0

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        """Account for `data`; the (start position, total length) of every frame whose
        length prefix completed inside it."""
        frames = []
        i, n = 0, len(data)
        while i < n:
            if self._left:
                step = min(self._left, n - i)
                self._left -= step
                i += step
                continue
            if not self._header:
                self._frame_start = self.pos + i
            take = min(LENGTH_PREFIX - len(self._header), n - i)
            self._header += data[i : i + take]
            i += take
            if len(self._header) == LENGTH_PREFIX:
                (length,) = _LEN.unpack(self._header)
                self._header.clear()
                self._left = length
                frames.append((self._frame_start, LENGTH_PREFIX + length))
        self.pos += n
        return frames


def _cut_point(frames: list[tuple[int, int]], start: int, fraction: float) -> int | None:
    """Where to cut among `frames` (stream positions; bytes before `start` are already sent):
    strictly inside a frame, so at least one of its bytes is sent and one is withheld."""
    for fstart, flen in frames:
        lo, hi = fstart + 1, fstart + flen - 1
        target = max(lo + math.floor(fraction * (hi - lo)), start)
        if target <= hi:
            return target
    return None


@dataclass
class Cut:
    """An armed cut: direction, and where inside the frame (0..1) to cut."""

    direction: str
    fraction: float
    target: int | None = None  # absolute stream position to cut at, once a frame is seen


@dataclass
class FaultProxy:
    """Relays pager <-> hv; `arm_cut` schedules one mid-frame cut."""

    upstream: str
    connections: int = 0
    cuts: list[dict[str, Any]] = field(default_factory=list)
    _armed: Cut | None = None

    def arm_cut(self, direction: str, fraction: float) -> None:
        """Cut the next frame that starts going `direction` ("to_hv" or "to_pager")."""
        if direction not in ("to_hv", "to_pager"):
            raise ValueError(f"unknown direction {direction!r}")
        self._armed = Cut(direction, min(max(fraction, 0.0), 1.0))

    def disarm(self) -> bool:
        """Drop an armed cut that has not fired; True if one was armed."""
        armed, self._armed = self._armed, None
        return armed is not None

    @property
    def armed(self) -> bool:
        """True while a cut waits for its frame."""
        return self._armed is not None

    async def serve(
        self,
        path: str,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on `path` (mode 0600, as privcmd.sock) until cancelled."""
        await serve_unix(path, self._handle, mode=0o600, task_status=task_status)

    async def _handle(self, down: trio.SocketStream) -> None:
        try:
            up = await trio.open_unix_socket(self.upstream)
        except OSError as exc:
            log.warning("proxy.upstream_unreachable", error=str(exc))
            return
        self.connections += 1
        conn = self.connections
        log.info("proxy.connected", conn=conn)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._relay, down, up, "to_hv", nursery.cancel_scope, conn)
                nursery.start_soon(self._relay, up, down, "to_pager", nursery.cancel_scope, conn)
        finally:
            with trio.CancelScope(shield=True):
                await up.aclose()
                await down.aclose()

    async def _relay(
        self,
        src: trio.SocketStream,
        dst: trio.SocketStream,
        direction: str,
        both: trio.CancelScope,
        conn: int,
    ) -> None:
        tracker = FrameTracker()
        try:
            while True:
                data = await src.receive_some(CHUNK)
                if not data:
                    break
                start = tracker.pos
                frames = tracker.feed(data)
                cut = self._armed
                if cut is not None and cut.direction == direction:
                    if cut.target is None:
                        cut.target = _cut_point(frames, start, cut.fraction)
                    if cut.target is not None and cut.target < tracker.pos:
                        keep = cut.target - start
                        await dst.send_all(data[:keep])
                        self._armed = None
                        record = {"conn": conn, "direction": direction, "at_byte": cut.target}
                        self.cuts.append(record)
                        log.warning("proxy.cut", **record)
                        break
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        # One side is gone (or we cut): close both, as a broken link would.
        both.cancel()
