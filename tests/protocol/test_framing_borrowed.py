"""`FrameDecoder.receive_data(..., borrowed=True)`: frames decoded where they lie in the
caller's buffer, which the caller overwrites as soon as `next_message` says NEED_DATA
(as a connection's receive buffer is, transport/sockbuf.py). Each test scribbles over the
buffer at that moment, so a decoder that kept a byte of it past NEED_DATA fails."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import CLOSED, MAX_FRAME, NEED_DATA, FrameDecoder, RemoteProtocolError, encode_frame

messages = st.dictionaries(
    st.text(max_size=6),
    st.none() | st.integers(-(2**31), 2**31) | st.text(max_size=20) | st.binary(max_size=600),
    max_size=5,
)


def feed(decoder: FrameDecoder, stream: bytes, cuts: list[int], borrowed: list[bool]) -> list:
    """Feed `stream` in chunks ending at `cuts`, each through one reused buffer (borrowed)
    or as bytes; every message the decoder gives, scribbling on the buffer at NEED_DATA."""
    buf = bytearray(len(stream) + 1)
    out: list = []
    start = 0
    for i, end in enumerate([*sorted(set(cuts)), len(stream)]):
        if end <= start:
            continue
        n = end - start
        if borrowed[i % len(borrowed)]:
            buf[:n] = stream[start:end]
            decoder.receive_data(memoryview(buf)[:n], borrowed=True)
        else:
            decoder.receive_data(stream[start:end])
        while (msg := decoder.next_message()) is not NEED_DATA:
            out.append(msg)
        buf[:] = b"\xa5" * len(buf)  # the next read lands here: nothing may still point at it
        start = end
    return out


@given(
    st.lists(messages, min_size=1, max_size=6),
    st.lists(st.integers(0, 4000), max_size=8),
    st.lists(st.booleans(), min_size=1, max_size=4),
)
def test_any_chunking_borrowed_or_not_gives_the_messages(
    msgs: list[dict], cuts: list[int], borrowed: list[bool]
) -> None:
    stream = b"".join(encode_frame(m) for m in msgs)
    decoder = FrameDecoder()
    got = feed(decoder, stream, [c for c in cuts if c < len(stream)], borrowed)
    decoder.receive_data(b"")
    assert decoder.next_message() is CLOSED
    assert got == msgs
    assert decoder.buffered == 0


def test_a_batch_reply_in_one_borrowed_chunk_among_small_frames() -> None:
    pages = [bytes([i]) * 4096 for i in range(64)]
    msgs = [{"id": 1, "ok": True}, {"id": 2, "pages": pages}, {"id": 3, "ok": False}]
    stream = b"".join(encode_frame(m) for m in msgs)
    for cut in (0, 3, 7, 1000, len(stream) - 10, len(stream) - 1):
        decoder = FrameDecoder()
        assert feed(decoder, stream, [cut], [True]) == msgs


@given(st.integers(MAX_FRAME + 1, 2**32 - 1), st.integers(0, 3))
def test_oversize_length_rejected_before_any_body_is_held(length: int, cut: int) -> None:
    stream = struct.pack(">I", length) + b"\0" * 64
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        feed(decoder, stream, [cut] if cut else [], [True])
    assert decoder.buffered <= 4 + 64  # the caller's chunk at most: nothing copied past it


@given(st.data())
def test_a_frame_cut_by_the_end_of_the_stream_is_an_error(data: st.DataObject) -> None:
    stream = encode_frame({"op": "map", "id": 3, "pages": [b"x" * 100]})
    end = data.draw(st.integers(1, len(stream) - 1))
    cut = data.draw(st.integers(0, end))
    decoder = FrameDecoder()
    assert feed(decoder, stream[:end], [cut], [True]) == []
    decoder.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        decoder.next_message()
