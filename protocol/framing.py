"""Length-prefixed msgpack frames, sans-IO: feed bytes in, pull messages out.

A frame is a 4-byte unsigned big-endian length L (1 <= L <= MAX_FRAME), then L bytes
holding exactly one msgpack map whose top-level keys are strings (PROTOCOL.md §2). The
length is checked before the body is buffered, so a peer cannot make us hold more than
MAX_FRAME + 4 bytes. Every malformed input becomes a RemoteProtocolError (EPROTO), never
another exception: after one, the stream cannot be resynchronised and must be closed.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Mapping
from typing import Any, Final

import msgpack

from .constants import LENGTH_PREFIX, MAX_DEPTH, MAX_FRAME
from .errors import LocalProtocolError, RemoteProtocolError

_LEN = struct.Struct(">I")
#: The only key type allowed at the top level (msgpack decodes a str key as exactly `str`).
_STR: Final = frozenset((str,))


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: `FrameDecoder.next_message()` needs more bytes before it can return a message.
NEED_DATA: Final = _Sentinel("NEED_DATA")
#: The peer closed the stream cleanly between frames.
CLOSED: Final = _Sentinel("CLOSED")


class _Packers(threading.local):
    """One reusable `msgpack.Packer` per thread (`msgpack.packb` builds a new one, with its
    buffer, for every message; a Packer is not safe to share between threads)."""

    def __init__(self) -> None:
        self.packer = msgpack.Packer(use_bin_type=True)


_PACKERS = _Packers()


def encode_frame(msg: Mapping[str, Any]) -> bytes:
    """Encode one message as a frame; LocalProtocolError if it does not fit in MAX_FRAME.

    A top-level list holding byte strings (a `map` reply's pages, a `prep`'s) is encoded
    piece by piece around them, each buffer copied once, into the frame itself: msgpack
    would copy it into its buffer, then out into a bytes object, and the length prefix
    before it would copy the body once more. The bytes are msgpack's, to the byte."""
    packer = _PACKERS.packer
    if not any(type(v) is list and not _BUFFERS.isdisjoint(map(type, v)) for v in msg.values()):
        body = packer.pack(msg)
        _check_size(len(body))
        return _LEN.pack(len(body)) + body
    parts: list[bytes | bytearray | memoryview] = [b"", packer.pack_map_header(len(msg))]
    pack = packer.pack
    for key, value in msg.items():
        parts.append(pack(key))
        if type(value) is not list or _BUFFERS.isdisjoint(map(type, value)):
            parts.append(pack(value))
            continue
        parts.append(packer.pack_array_header(len(value)))
        for item in value:
            if type(item) in _BUFFERS:
                parts.append(_bin_header(len(item)))
                parts.append(item)
            else:
                parts.append(pack(item))
    size = sum(map(len, parts))
    _check_size(size)
    parts[0] = _LEN.pack(size)
    return b"".join(parts)


#: Buffer types msgpack packs as `bin` (with use_bin_type).
_BUFFERS: Final = frozenset((bytes, bytearray, memoryview))
_BIN8: Final = struct.Struct(">BB")
_BIN16: Final = struct.Struct(">BH")
_BIN32: Final = struct.Struct(">BI")
_PAGE_BIN: Final = _BIN16.pack(0xC5, 4096)  # the header of every page-sized bin


def _bin_header(n: int) -> bytes:
    """msgpack's header of a `bin` of n bytes (bin 8, 16 or 32: the smallest that fits)."""
    if n == 4096:
        return _PAGE_BIN
    if n < 0x100:
        return _BIN8.pack(0xC4, n)
    if n < 0x10000:
        return _BIN16.pack(0xC5, n)
    return _BIN32.pack(0xC6, n)


def _check_size(size: int) -> None:
    if size > MAX_FRAME:
        raise LocalProtocolError(f"message of {size} bytes exceeds MAX_FRAME ({MAX_FRAME})")


def decode_body(body: bytes | memoryview) -> dict[str, Any]:
    """Decode one frame body into a message map, or raise RemoteProtocolError."""
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises ValueError, TypeError, UnpackException, ...
        raise RemoteProtocolError(f"body is not one msgpack value: {type(exc).__name__}") from None
    if not isinstance(msg, dict):
        raise RemoteProtocolError(f"body is a {type(msg).__name__}, not a map")
    if not _STR.issuperset(map(type, msg)):  # one C-level pass over the keys
        raise RemoteProtocolError("top-level keys must be strings")
    if _NESTED.isdisjoint(map(type, msg.values())):
        return msg  # scalars only (most requests and replies): one C-level pass
    if _too_deep(msg, MAX_DEPTH):
        raise RemoteProtocolError(f"body nests deeper than {MAX_DEPTH} levels")
    return msg


#: The container types a decoded body can hold (msgpack builds exactly these).
_NESTED: Final = frozenset((dict, list))


def _too_deep(value: Any, budget: int) -> bool:
    if budget == 0:
        return True
    children = value.values() if type(value) is dict else value
    if _NESTED.isdisjoint(map(type, children)):
        return False  # scalars only below (most page lists and gfn lists): one C-level pass
    return any(_too_deep(c, budget - 1) for c in children if type(c) in _NESTED)


class FrameDecoder:
    """Incremental frame decoder in the h11 style: `receive_data`, then `next_message`.

    Bytes fed with `borrowed=True` are not copied: frames that lie whole in them are
    decoded where they are, and only a frame cut at the end of the chunk is copied (its
    start when `next_message` returns NEED_DATA, its rest from the next chunk). The caller
    may reuse a borrowed buffer once `next_message` has returned NEED_DATA (that is, before
    reading into it again), not before. A 64-page `map` reply (262 KiB) read whole into a
    connection's receive buffer (transport/sockbuf.py) is thus decoded with no copy of its
    pages but msgpack's own."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()  # bytes we own: fed unborrowed, or a cut frame's part
        self._view: memoryview | None = None  # borrowed bytes, unread from `_pos` on
        self._pos = 0
        self._max_frame = max_frame
        self._need: int | None = None  # body length of the frame at `_buf`'s start
        self._eof = False

    def receive_data(self, data: bytes | bytearray | memoryview, *, borrowed: bool = False) -> None:
        """Feed bytes from the stream; `b""` means the peer closed it. `borrowed`: see the
        class docstring."""
        if self._eof:
            raise RuntimeError("receive_data after EOF")
        if not data:
            self._eof = True
            self._spill()
            return
        self._spill()  # borrowed bytes still unread: ours now (a caller that did not wait)
        if not borrowed:
            self._buf += data
            # Reject an oversize length as soon as the prefix is here, before the body.
            self._check_prefix()
            return
        view = memoryview(data)
        if self._buf:
            take = self._missing()
            if take == 0:  # `_buf` holds a whole frame already (fed unborrowed): append
                self._buf += view
                return
            # Complete the frame `_buf` holds the start of, copying only its rest.
            if take == LENGTH_PREFIX:  # not even its prefix is here yet
                take = LENGTH_PREFIX - len(self._buf)
                self._buf += view[:take]
                view = view[take:]
                self._check_prefix()
                take = self._missing()
            self._buf += view[:take]
            view = view[take:]
        if len(view):
            self._view, self._pos = view, 0

    def _missing(self) -> int:
        """Bytes `_buf`'s first frame still lacks (LENGTH_PREFIX while its length is not
        known yet); 0 when it is whole."""
        if self._need is None:
            return 0 if len(self._buf) >= LENGTH_PREFIX else LENGTH_PREFIX
        return max(0, LENGTH_PREFIX + self._need - len(self._buf))

    def _spill(self) -> None:
        """Copy the unread borrowed bytes into `_buf` (the caller may reuse its buffer)."""
        if self._view is not None:
            view, self._view = self._view, None
            self._buf += view[self._pos :]
            view.release()
            self._check_prefix()

    @property
    def buffered(self) -> int:
        """Bytes held but not yet returned as messages."""
        unread = len(self._view) - self._pos if self._view is not None else 0
        return len(self._buf) + unread

    def _length(self, length: int) -> int:
        if length == 0:
            raise RemoteProtocolError("frame length 0")
        if length > self._max_frame:
            raise RemoteProtocolError(f"frame length {length} exceeds MAX_FRAME")
        return length

    def _check_prefix(self) -> None:
        if self._need is None and len(self._buf) >= LENGTH_PREFIX:
            self._need = self._length(_LEN.unpack_from(self._buf)[0])

    def next_message(self) -> dict[str, Any] | _Sentinel:
        """Return the next message, NEED_DATA, or CLOSED; raise RemoteProtocolError on garbage."""
        if self._buf:
            self._check_prefix()
            if self._need is not None and len(self._buf) >= LENGTH_PREFIX + self._need:
                end = LENGTH_PREFIX + self._need
                # Decoded in place: a copy of the body (two, with the slice) per frame cost
                # a 64-page map reply more than its decoding.
                try:
                    with memoryview(self._buf)[LENGTH_PREFIX:end] as body:
                        return decode_body(body)
                finally:
                    del self._buf[:end]
                    self._need = None
            if self._view is not None:  # never with a cut frame in `_buf`; if so, in order
                self._spill()
                return self.next_message()
        elif self._view is not None:
            view, at = self._view, self._pos
            if len(view) - at >= LENGTH_PREFIX:
                end = at + LENGTH_PREFIX + self._length(_LEN.unpack_from(view, at)[0])
                if end <= len(view):
                    self._pos = end
                    with view[at + LENGTH_PREFIX : end] as body:
                        return decode_body(body)
            self._spill()  # a frame cut at the chunk's end: its start is ours now
        if self._eof:
            if self._buf:
                raise RemoteProtocolError(
                    f"stream closed inside a frame ({len(self._buf)} bytes pending)"
                )
            return CLOSED
        return NEED_DATA
