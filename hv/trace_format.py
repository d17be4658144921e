"""The recorded-trace file format, XPTRACE2 (docs/policy.md, "Trace files"): stdlib only.

All little-endian. A 64-byte header: magic ``XPTRACE2`` (8 bytes), u16 version (2), u16
header size (64), u16 record size before compression (10), u16 vCPUs, u32 nr_gfns, u32
domid, u32 records per block at most (65,536), zeros to byte 60, u32 crc32 of bytes 0-59.
Then blocks, each:

- a 24-byte block header: u32 ``length`` (of the compressed payload), u32 ``records``
  (1..65,536), u64 ``t0_us`` (µs since recording began, of the block's first record), u32
  crc32 of the payload, u32 crc32 of the header's first 20 bytes;
- ``length`` bytes of zlib (RFC 1950) holding ``records`` x 10 bytes, columnar: each
  record is u32 ``gfn``, u32 ``dt_us`` (µs since the block's previous record, 0 for its
  first), u16 ``vf`` (``vcpu << 3 | outcome << 1 | write``), and the payload stores
  byte 0 of every record, then byte 1 of every record, ... then byte 9: byte planes, so
  the high bytes that rarely change lie together and compress to almost nothing.

gfns are stored whole, not as deltas: with several vCPUs interleaved, consecutive
records are different vCPUs' gfns, and measured deltas compressed worse (2.86 against
2.80 bytes a record on a recorded `xpemu up` trace, 3.29 against 3.15 on Zipf).

A reader keeps every whole block; a last block cut short (hv killed mid-write) is dropped
and reported; anything else that does not check (a crc, a length, the magic) is damage.
XPTRACE1 (the 12-byte fixed records of before) is still read: `V1_*` below.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

MAGIC: Final = b"XPTRACE2"
VERSION: Final = 2
HEADER_SIZE: Final = 64
_HEADER: Final = struct.Struct("<8sHHHHIII")

#: One record before compression: gfn, dt_us, vf. `vf` = vcpu << 3 | outcome << 1 | write.
RECORD: Final = struct.Struct("<IIH")
RECORD_SIZE: Final = RECORD.size
BLOCK_HEADER: Final = struct.Struct("<IIQII")
BLOCK_HEADER_SIZE: Final = BLOCK_HEADER.size
#: Records a block holds at most: 640 KiB before compression.
BLOCK_RECORDS: Final = 65_536
#: The largest `dt_us` a record holds; a longer gap starts a new block.
MAX_DT_US: Final = 0xFFFF_FFFF
MAX_VCPU: Final = 0x1FFF

#: zlib level 6 with Z_FILTERED: measured 2.80 / 2.99 / 3.13 bytes a record (recorded,
#: Zipf, random) at ~25 ms a full block; level 9 saves 0.02-0.04 at 4x the time.
ZLIB_LEVEL: Final = 6

# XPTRACE1: the 64-byte header (same first 24 bytes, version 1, record size 12), then
# fixed 12-byte records: u32 t_us (mod 2**32), u32 gfn, u16 vcpu, u8 write, u8 outcome.
V1_MAGIC: Final = b"XPTRACE1"
V1_RECORD_SIZE: Final = 12

OUTCOME_HIT: Final = 0
OUTCOME_FAULT: Final = 1
OUTCOME_REFUSED: Final = 2


class TraceFormatError(ValueError):
    """The file is damaged or is no trace: one line, naming the file."""


def header_bytes(nr_gfns: int, vcpus: int, domid: int) -> bytes:
    """The 64-byte XPTRACE2 header of a trace of domain `domid`."""
    head = _HEADER.pack(
        MAGIC, VERSION, HEADER_SIZE, RECORD_SIZE, vcpus, nr_gfns, domid, BLOCK_RECORDS
    ).ljust(HEADER_SIZE - 4, b"\0")
    return head + struct.pack("<I", zlib.crc32(head))


def pack_vf(vcpu: int, write: bool, outcome: int) -> int:
    """A record's `vf` field."""
    return vcpu << 3 | outcome << 1 | int(write)


def seal_block(records: bytes | bytearray | memoryview, t0_us: int) -> bytes:
    """One block, header and payload, of `records` (n x RECORD_SIZE bytes, RECORD each)."""
    n, rest = divmod(len(records), RECORD_SIZE)
    assert rest == 0 and 0 < n <= BLOCK_RECORDS, (len(records), n)
    raw = bytes(records)
    planes = b"".join(raw[k::RECORD_SIZE] for k in range(RECORD_SIZE))
    comp = zlib.compressobj(ZLIB_LEVEL, zlib.DEFLATED, 15, 9, zlib.Z_FILTERED)
    payload = comp.compress(planes) + comp.flush()
    head = struct.pack("<IIQI", len(payload), n, t0_us, zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def encode_trace(
    records: Iterable[tuple[int, int, int, bool, int]],
    *,
    nr_gfns: int,
    vcpus: int,
    domid: int = 1,
    block_records: int = BLOCK_RECORDS,
) -> bytes:
    """A whole XPTRACE2 file of (t_us, gfn, vcpu, write, outcome) records, t_us not
    decreasing: for tests and benchmarks (hv writes through hv.trace.TraceRecorder)."""
    out = [header_bytes(nr_gfns, vcpus, domid)]
    buf = bytearray()
    t0 = last = 0
    for t_us, gfn, vcpu, write, outcome in records:
        if buf and (len(buf) == block_records * RECORD_SIZE or t_us - last > MAX_DT_US):
            out.append(seal_block(buf, t0))
            buf.clear()
        if not buf:
            t0 = last = t_us
        buf += RECORD.pack(gfn, t_us - last, pack_vf(vcpu, write, outcome))
        last = t_us
    if buf:
        out.append(seal_block(buf, t0))
    return b"".join(out)


@dataclass(frozen=True)
class Header:
    """What an XPTRACE2 header says."""

    vcpus: int
    nr_gfns: int
    domid: int
    block_records: int


@dataclass(frozen=True)
class Block:
    """One whole block: `planes` is the decompressed payload (byte planes of records)."""

    t0_us: int
    records: int
    planes: bytes


@dataclass(frozen=True)
class Parsed:
    """A parsed XPTRACE2 file: its whole blocks, and what was dropped at its end."""

    header: Header
    blocks: list[Block]
    #: One line about a last block cut short (hv killed mid-write), or None.
    torn: str | None


def parse_header(name: str, head: bytes) -> Header:
    """The header of an XPTRACE2 file (TraceFormatError if it is not one this reads)."""
    if len(head) < HEADER_SIZE or not head.startswith(MAGIC):
        raise TraceFormatError(f"{name}: no {MAGIC.decode()} header")
    _, version, hsize, rsize, vcpus, nr_gfns, domid, per_block = _HEADER.unpack_from(head)
    if version != VERSION or hsize != HEADER_SIZE or rsize != RECORD_SIZE:
        raise TraceFormatError(
            f"{name}: trace version {version} (header {hsize}, record {rsize} bytes): this"
            f" xpemu reads version {VERSION}"
        )
    if zlib.crc32(head[: HEADER_SIZE - 4]) != int.from_bytes(head[HEADER_SIZE - 4 :], "little"):
        raise TraceFormatError(f"{name}: damaged header (crc32 does not match)")
    if not 0 < per_block <= BLOCK_RECORDS:
        raise TraceFormatError(f"{name}: damaged header (records per block {per_block})")
    return Header(vcpus, nr_gfns, domid, per_block)


def parse(name: str, data: bytes) -> Parsed:
    """Every block of the XPTRACE2 file `data` (named `name` in messages), checked."""
    header = parse_header(name, data[:HEADER_SIZE])
    blocks: list[Block] = []
    off, size = HEADER_SIZE, len(data)
    while off < size:
        where = f"{name}: block {len(blocks)} at byte {off:,}"
        if size - off < BLOCK_HEADER_SIZE:
            return Parsed(header, blocks, f"{where} is cut short (hv killed mid-write?): dropped")
        length, n, t0_us, crc, head_crc = BLOCK_HEADER.unpack_from(data, off)
        if zlib.crc32(data[off : off + BLOCK_HEADER_SIZE - 4]) != head_crc:
            raise TraceFormatError(f"{where}: damaged (block header crc32 does not match)")
        if not 0 < n <= header.block_records:
            raise TraceFormatError(f"{where}: damaged ({n} records in one block)")
        start = off + BLOCK_HEADER_SIZE
        if start + length > size:
            return Parsed(
                header,
                blocks,
                f"{where} is cut short, {size - start:,} of {length:,} bytes"
                " (hv killed mid-write?): dropped",
            )
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            raise TraceFormatError(f"{where}: damaged (payload crc32 does not match)")
        try:
            planes = zlib.decompress(payload)
        except zlib.error as exc:
            raise TraceFormatError(f"{where}: damaged ({exc})") from None
        if len(planes) != n * RECORD_SIZE:
            raise TraceFormatError(
                f"{where}: damaged ({len(planes):,} bytes, not {n} records of {RECORD_SIZE})"
            )
        blocks.append(Block(t0_us, n, planes))
        off = start + length
    return Parsed(header, blocks, None)


def decode_python(parsed: Parsed) -> list[tuple[int, int, int, bool, int]]:
    """Every record of `parsed` as (t_us, gfn, vcpu, write, outcome), without numpy: the
    reference the numpy reader (stack.policylab.traces) is tested against."""
    out: list[tuple[int, int, int, bool, int]] = []
    for b in parsed.blocks:
        n = b.records
        rows = bytes(b.planes[k * n + i] for i in range(n) for k in range(RECORD_SIZE))
        t = b.t0_us
        for gfn, dt, vf in RECORD.iter_unpack(rows):
            t += dt
            out.append((t, gfn, vf >> 3, bool(vf & 1), (vf >> 1) & 3))
    return out
