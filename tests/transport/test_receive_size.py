"""A connection reads at most `RECEIVE_SIZE` (64 KiB) per call, and large frames still
arrive whole. CPython allocates a buffer of the asked size per read; asking for a whole
frame (1 MiB) made the processes' heaps creep by MBs an hour (transport/connection.py)."""

from __future__ import annotations

import trio
import trio.testing

from transport import open_connection
from transport.connection import RECEIVE_SIZE

#: glibc's initial mmap threshold: reads above it made the heap creep.
MMAP_THRESHOLD = 128 * 1024


class Recording(trio.abc.Stream):
    """A stream that records the `max_bytes` of every read."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.asked: list[int | None] = []

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        self.asked.append(max_bytes)
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_reads_stay_under_the_mmap_threshold_and_large_frames_arrive() -> None:
    assert RECEIVE_SIZE < MMAP_THRESHOLD
    a, b = trio.testing.memory_stream_pair()
    rec = Recording(b)
    pages = [bytes([i]) * 4096 for i in range(64)]  # a 64-page batch: 262 KiB
    with trio.fail_after(10):
        async with open_connection(a) as sender, open_connection(rec) as receiver:
            for n in range(3):
                sender.send_nowait({"id": n, "ok": True, "pages": pages})
            for n in range(3):
                msg = await receiver.receive()
                assert msg["id"] == n and msg["pages"] == pages
    assert rec.asked and all(m is not None and m <= RECEIVE_SIZE for m in rec.asked)
