"""The decoder turns every garbage input into EPROTO, never another exception."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    CLOSED,
    MAX_DEPTH,
    MAX_FRAME,
    NEED_DATA,
    Errno,
    FrameDecoder,
    LocalProtocolError,
    RemoteProtocolError,
    encode_frame,
)


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def drain(decoder: FrameDecoder) -> list:
    out = []
    while (msg := decoder.next_message()) is not NEED_DATA and msg is not CLOSED:
        out.append(msg)
    return out


def feed_all(data: bytes, eof: bool = True) -> list:
    """Feed everything, returning messages, or the RemoteProtocolError raised."""
    decoder = FrameDecoder()
    try:
        if data:  # b"" would mean EOF
            decoder.receive_data(data)
        out = drain(decoder)
        if eof:
            decoder.receive_data(b"")
            out += drain(decoder)
        return out
    except RemoteProtocolError as exc:
        assert exc.errno == Errno.EPROTO
        return [exc]


messages = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
        ),
        max_leaves=10,
    ),
    max_size=6,
)


@given(st.lists(messages, min_size=1, max_size=5), st.data())
def test_split_at_every_boundary(msgs: list[dict], data: st.DataObject) -> None:
    msgs = [m for m in msgs if len(msgpack.packb(m)) > 0]
    stream = b"".join(encode_frame(m) for m in msgs)
    cut = data.draw(st.integers(0, len(stream)))
    decoder = FrameDecoder()
    if stream[:cut]:
        decoder.receive_data(stream[:cut])
    got = drain(decoder)
    if stream[cut:]:
        decoder.receive_data(stream[cut:])
    got += drain(decoder)
    decoder.receive_data(b"")
    assert decoder.next_message() is CLOSED
    assert got == msgs


def test_every_byte_boundary_of_one_frame() -> None:
    stream = encode_frame({"op": "hello", "id": 0, "v": 1, "role": "pager", "domid": 1})
    for i in range(len(stream) + 1):
        decoder = FrameDecoder()
        if i:
            decoder.receive_data(stream[:i])
        first = drain(decoder)
        if stream[i:]:
            decoder.receive_data(stream[i:])
        assert first + drain(decoder) == [
            {"op": "hello", "id": 0, "v": 1, "role": "pager", "domid": 1}
        ]


@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    result = feed_all(data)
    assert all(isinstance(m, dict | RemoteProtocolError) for m in result)


@given(st.binary(min_size=1, max_size=100))
def test_random_bodies_are_maps_or_eproto(body: bytes) -> None:
    for m in feed_all(frame(body)):
        assert isinstance(m, RemoteProtocolError) or isinstance(m, dict)


@given(st.integers(MAX_FRAME + 1, 2**32 - 1))
def test_oversize_length_rejected_before_body(length: int) -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(struct.pack(">I", length))  # no body byte was ever sent
    assert decoder.buffered <= 4


def test_zero_length_rejected() -> None:
    assert isinstance(feed_all(b"\0\0\0\0")[0], RemoteProtocolError)


@given(st.data())
def test_truncated_frames(data: st.DataObject) -> None:
    stream = encode_frame({"op": "map", "id": 3, "gfns": [1, 2, 3]})
    cut = data.draw(st.integers(1, len(stream) - 1))
    [err] = feed_all(stream[:cut])
    assert isinstance(err, RemoteProtocolError)


@pytest.mark.parametrize(
    "value",
    [[1, 2], "str", 7, None, b"bin", True, 1.5],
)
def test_non_map_bodies(value: object) -> None:
    [err] = feed_all(frame(msgpack.packb(value, use_bin_type=True)))
    assert isinstance(err, RemoteProtocolError)


@pytest.mark.parametrize("key", [1, b"bytes", None, 2.5, True])
def test_non_string_keys(key: object) -> None:
    body = b"\x81" + msgpack.packb(key, use_bin_type=True) + msgpack.packb(1)
    [err] = feed_all(frame(body))
    assert isinstance(err, RemoteProtocolError)


def test_two_values_in_one_body() -> None:
    [err] = feed_all(frame(msgpack.packb({"a": 1}) + msgpack.packb({"b": 2})))
    assert isinstance(err, RemoteProtocolError)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100, 5000, 200_000])
def test_deeply_nested_bodies(depth: int) -> None:
    body = b"\x81\xa1k" + b"\x91" * depth + b"\x00"  # {"k": [[[...0...]]]}
    [err] = feed_all(frame(body))
    assert isinstance(err, RemoteProtocolError)


@pytest.mark.parametrize("depth", [MAX_DEPTH, MAX_DEPTH + 3])
def test_a_deep_value_among_scalars_is_found(depth: int) -> None:
    # A long list of scalars is passed over in one go: a nested value inside it still counts.
    deep: object = 0
    for _ in range(depth - 1):
        deep = [deep]
    body = msgpack.packb({"a": 1, "k": [1] * 50 + [deep] + [2] * 50, "m": {"x": [3]}})
    [err] = feed_all(frame(body))
    assert isinstance(err, RemoteProtocolError)


def test_nesting_within_limit_is_fine() -> None:
    body = b"\x81\xa1k" + b"\x91" * (MAX_DEPTH - 1) + b"\x00"
    [msg] = feed_all(frame(body))
    assert isinstance(msg, dict)


def test_invalid_utf8_string() -> None:
    body = b"\x81\xa1k\xa2\xff\xfe"
    [err] = feed_all(frame(body))
    assert isinstance(err, RemoteProtocolError)


def test_eof_between_frames_is_clean() -> None:
    assert feed_all(encode_frame({"a": 1})) == [{"a": 1}]


def test_no_trio_import() -> None:
    import subprocess
    import sys

    code = "import protocol, sys; assert 'trio' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


_BUFFER = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([4096, 255, 256, 65535, 65536]).map(bytes),
    st.binary(max_size=40).map(bytearray),
    st.binary(max_size=40).map(memoryview),
)
_ITEM = st.one_of(_BUFFER, st.none(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=6))


@given(
    st.dictionaries(
        st.text(max_size=6),
        st.one_of(st.lists(_ITEM, max_size=20), _ITEM, st.lists(st.integers(0, 9), max_size=3)),
        max_size=5,
    )
)
def test_frames_with_buffers_are_msgpack_to_the_byte(msg: dict) -> None:
    """Lists of byte strings (pages) are encoded around the buffers, not by msgpack: the
    bytes must be msgpack's all the same."""
    body = msgpack.packb(msg, use_bin_type=True)
    assert encode_frame(msg) == frame(body)


def test_a_reply_of_255_pages_fits_and_256_do_not() -> None:
    page = bytes(range(256)) * 16
    reply = {"id": 1, "ok": True, "pages": [page, "ENOENT", memoryview(page)] * 85}
    assert encode_frame(reply) == frame(msgpack.packb(reply, use_bin_type=True))
    with pytest.raises(LocalProtocolError, match="exceeds MAX_FRAME"):
        encode_frame({"id": 1, "ok": True, "pages": [page] * 256})
