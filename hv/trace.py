"""Recording a domain's guest accesses, as hv sees them, to a compact fixed-record file.

The format (docs/policy.md, "Trace files"), all little-endian:

- a 64-byte header: magic ``XPTRACE1`` (8 bytes), then u16 version (1), u16 header size
  (64), u16 record size (12), u16 vCPUs, u32 nr_gfns, u32 domid, and zeros to byte 64;
- then one 12-byte record per guest access, in the order hv handled them: u32 ``t_us``
  (microseconds since recording began, modulo 2**32: unwrap by adding 2**32 each time it
  goes down), u32 ``gfn``, u16 ``vcpu``, u8 ``write`` (0 read, 1 write), u8 ``outcome``
  (0 the page was resident, 1 it was not: hv populated it or waited for a ring slot, a
  fault; 2 refused with an errno, as for a ballooned gfn).

A record is one access, however many times hv retried it after pauses. numpy reads the
records with ``np.fromfile(path, TRACE_DTYPE, offset=64)``; the count is the file's size,
so a file cut short by a killed hv holds every record written before (only a torn last
record is dropped). Records are buffered `FLUSH_RECORDS` at a time and appended with one
write: memory stays bounded however long the run. A million accesses take 12 MB.
"""

from __future__ import annotations

import os
import struct
from typing import Final

import trio

from .rules import OK, PAUSE, WAIT

MAGIC: Final = b"XPTRACE1"
VERSION: Final = 1
HEADER_SIZE: Final = 64
RECORD: Final = struct.Struct("<IIHBB")
RECORD_SIZE: Final = RECORD.size
_HEADER: Final = struct.Struct("<8sHHHHII")

#: Records buffered before one write (48 KiB): few syscalls, a bounded buffer, and at most
#: this many accesses lost if hv is killed.
FLUSH_RECORDS: Final = 4096

OUTCOME_HIT: Final = 0
OUTCOME_FAULT: Final = 1
OUTCOME_REFUSED: Final = 2


def outcome_of(result: object) -> int:
    """A record's `outcome` for an access whose p2m rule answered `result` (hv.rules)."""
    if result == OK:
        return OUTCOME_HIT
    if result in (PAUSE, WAIT):
        return OUTCOME_FAULT
    return OUTCOME_REFUSED


def header_bytes(nr_gfns: int, vcpus: int, domid: int) -> bytes:
    """The 64-byte header of a trace of domain `domid`."""
    head = _HEADER.pack(MAGIC, VERSION, HEADER_SIZE, RECORD_SIZE, vcpus, nr_gfns, domid)
    return head.ljust(HEADER_SIZE, b"\0")


class TraceRecorder:
    """Appends one record per guest access to `path` (created or truncated)."""

    def __init__(self, path: str, *, nr_gfns: int, vcpus: int, domid: int) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        os.write(self._fd, header_bytes(nr_gfns, vcpus, domid))
        self._buf = bytearray(FLUSH_RECORDS * RECORD_SIZE)
        self._n = 0  # records in the buffer
        self.records = 0  # records written or buffered
        self._t0: float | None = None

    def record(self, gfn: int, vcpu: int, write: bool, outcome: int) -> None:
        """One access: buffered, written out when the buffer is full."""
        now = trio.current_time()
        if self._t0 is None:
            self._t0 = now
        t_us = int((now - self._t0) * 1e6) & 0xFFFFFFFF
        RECORD.pack_into(self._buf, self._n * RECORD_SIZE, t_us, gfn, vcpu, write, outcome)
        self._n += 1
        self.records += 1
        if self._n == FLUSH_RECORDS:
            self.flush()

    def flush(self) -> None:
        """Write the buffered records (whole records only, so a reader never sees half)."""
        if self._n and self._fd >= 0:
            view = memoryview(self._buf)[: self._n * RECORD_SIZE]
            while view:
                view = view[os.write(self._fd, view) :]
        self._n = 0

    def close(self) -> None:
        """Flush and close; idempotent."""
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1
