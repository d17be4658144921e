"""LSB-first bitmaps as used by `audit` (`frames`) and `accessed` (`bits`): bit i of the
map is bit (i % 8) of byte (i // 8). Built through Python ints so that a 512 Ki-bit map
costs a few milliseconds, not a loop per bit."""

from __future__ import annotations

from collections.abc import Iterable

_TO_ASCII = bytes.maketrans(b"\x00\x01", b"01")


def pack_bits(flags: bytes | bytearray) -> bytes:
    """Pack a sequence of 0/1 bytes into an LSB-first bitmap of ceil(n/8) bytes."""
    n = len(flags)
    if n == 0:
        return b""
    digits = bytes(flags).translate(_TO_ASCII)[::-1]
    return int(digits, 2).to_bytes((n + 7) // 8, "little")


def unpack_bits(bitmap: bytes, n: int) -> bytearray:
    """Unpack the first n bits of an LSB-first bitmap into a bytearray of 0/1."""
    if n == 0:
        return bytearray()
    value = int.from_bytes(bitmap, "little")
    digits = format(value, "b").zfill(len(bitmap) * 8)[::-1][:n]
    out = bytearray(digits, "ascii")
    for i in range(0, n, 1 << 16):  # translate in place, chunk by chunk, without a copy per bit
        out[i : i + (1 << 16)] = out[i : i + (1 << 16)].translate(
            bytes.maketrans(b"01", b"\x00\x01")
        )
    return out


def bit(bitmap: bytes, i: int) -> bool:
    """Whether bit i is set."""
    return bool(bitmap[i >> 3] >> (i & 7) & 1)


def set_bits(indices: Iterable[int], n: int) -> bytes:
    """A bitmap of n bits with exactly the given indices set."""
    out = bytearray((n + 7) // 8)
    for i in indices:
        out[i >> 3] |= 1 << (i & 7)
    return bytes(out)
