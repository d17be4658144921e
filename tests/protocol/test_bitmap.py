"""LSB-first bitmaps of audit and accessed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from protocol import bit, pack_bits, set_bits, unpack_bits


@given(st.lists(st.booleans(), max_size=300))
def test_pack_unpack_roundtrip(flags: list[bool]) -> None:
    raw = bytearray(flags)
    packed = pack_bits(raw)
    assert len(packed) == (len(raw) + 7) // 8
    assert unpack_bits(packed, len(raw)) == raw
    assert [bit(packed, i) for i in range(len(raw))] == flags
    assert packed == set_bits([i for i, f in enumerate(flags) if f], len(raw))


def test_bit_order_is_lsb_first() -> None:
    assert pack_bits(bytearray([1, 0, 0, 0, 0, 0, 0, 0, 0, 1])) == b"\x01\x02"
