"""Recording a domain's guest accesses, as hv sees them, to a compact XPTRACE2 file.

The format is hv/trace_format.py's (docs/policy.md, "Trace files"): a 64-byte header,
then zlib-compressed columnar blocks of up to 65,536 records, each with its length and
crc32. A record is one access (gfn, read/write, vCPU, µs, whether its page was resident),
however many times hv retried it after pauses; about 3 bytes each, where XPTRACE1's fixed
records took 12.

Recording must not stall hv's event loop: `record` only packs 10 bytes into the open
block. A full block (or, every `SEAL_EVERY` seconds, whatever the open block holds) is
handed to `run`, a task in hv's nursery, which compresses and appends it in a worker
thread (`trio.to_thread`): about 25 ms of CPU a full block, off the loop. `close` seals
the rest. A killed hv leaves every sealed block readable: at most one block or the last
`SEAL_EVERY` seconds of accesses are lost, and a block cut short mid-write is dropped by
the reader with a line naming it.

Without `run` (tests, or `seal_in_thread=False`) blocks are sealed inline, in `record`.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Final

import trio

from .rules import OK, PAUSE, WAIT
from .trace_format import (
    BLOCK_RECORDS,
    MAX_DT_US,
    OUTCOME_FAULT,
    OUTCOME_HIT,
    OUTCOME_REFUSED,
    RECORD,
    RECORD_SIZE,
    header_bytes,
    seal_block,
)

__all__ = [
    "OUTCOME_FAULT",
    "OUTCOME_HIT",
    "OUTCOME_REFUSED",
    "SEAL_EVERY",
    "TraceRecorder",
    "outcome_of",
]

#: Seconds between seals of a block that is not full: what a killed hv can lose at most.
SEAL_EVERY: Final = 5.0
#: Full blocks waiting for the sealing thread beyond which `record` waits for it (about
#: 2.5 MiB of buffers): memory stays bounded if hv records faster than zlib compresses.
MAX_PENDING: Final = 4


def outcome_of(result: object) -> int:
    """A record's `outcome` for an access whose p2m rule answered `result` (hv.rules)."""
    if result == OK:
        return OUTCOME_HIT
    if result in (PAUSE, WAIT):
        return OUTCOME_FAULT
    return OUTCOME_REFUSED


class TraceRecorder:
    """Records one access per `record` call to `path` (created or truncated)."""

    def __init__(
        self,
        path: str,
        *,
        nr_gfns: int,
        vcpus: int,
        domid: int,
        block_records: int = BLOCK_RECORDS,
        seal_every: float = SEAL_EVERY,
    ) -> None:
        assert 0 < block_records <= BLOCK_RECORDS
        self.path = path
        self.block_records = block_records
        self.seal_every = seal_every
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        os.write(self._fd, header_bytes(nr_gfns, vcpus, domid))
        self._buf = bytearray(block_records * RECORD_SIZE)
        self._n = 0  # records in the open block
        self._block_t0 = 0  # t_us of the open block's first record
        self._last_t = 0  # t_us of the last record
        self.records = 0  # records recorded (sealed or not)
        self.blocks = 0  # blocks written
        self._t0: float | None = None
        # Closed blocks (records, t0_us), oldest first. Popped and written under `_lock`
        # only, by the sealing thread or inline: blocks reach the file in order, whole.
        self._pending: collections.deque[tuple[bytes, int]] = collections.deque()
        self._lock = threading.Lock()
        self._wake: trio.Event | None = None  # set while `run` is running
        self._progress = trio.Event()  # set by `run` each time it has sealed what it had

    def record(self, gfn: int, vcpu: int, write: bool, outcome: int) -> None:
        """One access, into the open block; a full block is handed on to be sealed."""
        now = trio.current_time()
        if self._t0 is None:
            self._t0 = now
        t_us = int((now - self._t0) * 1e6)
        if self._n and t_us - self._last_t > MAX_DT_US:
            self._close_block()
        if self._n == 0:
            self._block_t0 = self._last_t = t_us
        RECORD.pack_into(
            self._buf,
            self._n * RECORD_SIZE,
            gfn,
            t_us - self._last_t,
            vcpu << 3 | outcome << 1 | write,
        )
        self._last_t = t_us
        self._n += 1
        self.records += 1
        if self._n == self.block_records:
            self._close_block()

    def _close_block(self) -> None:
        """The open block to the pending ones; sealed by `run`, or here without it."""
        if not self._n:
            return
        self._take_block()
        if self._wake is None:
            self._seal_pending()
            return
        self._wake.set()
        self._seal_pending(keep=MAX_PENDING)  # the thread is behind: wait for it

    def _take_block(self) -> None:
        """The open block's records to the pending ones, to be sealed."""
        self._pending.append((bytes(self._buf[: self._n * RECORD_SIZE]), self._block_t0))
        self._n = 0

    def _seal_pending(self, keep: int = 0) -> None:
        """Seal pending blocks, oldest first, until `keep` are left (or the file closed)."""
        while len(self._pending) > keep:
            if not self._seal_next():
                return

    def _seal_next(self) -> bool:
        """Compress and append the oldest pending block (any thread); False if none."""
        with self._lock:
            if not self._pending or self._fd < 0:
                return False
            records, t0_us = self._pending.popleft()
            view = memoryview(seal_block(records, t0_us))
            while view:
                view = view[os.write(self._fd, view) :]
            self.blocks += 1
            return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Seal blocks in a worker thread until cancelled: each full block at once, the open
        one every `seal_every` seconds. Start it in hv's nursery (`nursery.start`)."""
        self._wake = trio.Event()
        task_status.started()
        try:
            while True:
                with trio.move_on_after(self.seal_every) as timer:
                    await self._wake.wait()
                self._wake = trio.Event()
                if timer.cancelled_caught:
                    self._close_block()
                while self._pending:
                    await trio.to_thread.run_sync(self._seal_next)
                self._progress.set()
                self._progress = trio.Event()
        finally:
            self._wake = None

    async def wait_sealed(self) -> None:
        """Until every record so far is in the file (`run` must be running): for tests."""
        while self._n or self._pending:
            await self._progress.wait()

    def flush(self) -> None:
        """Seal the open block and every pending one, here (outside `run`'s loop)."""
        if self._fd < 0:
            return
        if self._n:
            self._take_block()
        self._seal_pending()

    def close(self) -> None:
        """Seal what is left and close; idempotent."""
        if self._fd >= 0:
            self.flush()
            with self._lock:
                os.close(self._fd)
                self._fd = -1
