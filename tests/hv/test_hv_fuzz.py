"""Random requests of every op, with fields of every type and size, never crash hv.

Each example opens one connection (any role, any socket), says hello (or not), sends a
burst of random frames, and checks that every answer is a well-formed reply or event,
that the connection's server task ends cleanly when we close, and that `check()` holds.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from hv import HvConfig, Hypervisor
from protocol import (
    EVENTS,
    REQUESTS,
    SOCKET_ROLES,
    Errno,
    FrameDecoder,
    encode_frame,
)
from protocol.framing import CLOSED, NEED_DATA

NR = 16

INTS = st.one_of(
    st.integers(-3, NR + 3),
    st.sampled_from([-(2**63), 2**63 - 1, 2**64 - 1, 4095, 4096, 4097, 65536]),
)
SCALARS = st.one_of(
    INTS,
    st.booleans(),
    st.none(),
    st.text(max_size=6),
    st.binary(max_size=8),
    st.just(bytes(4096)),
    st.floats(allow_nan=False),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELD_NAMES = sorted(
    {n for roles in REQUESTS.values() for f in roles.values() for n in f.names} | {"op", "id"}
)
GFN_LISTS = st.lists(INTS, max_size=6)
RSPS = st.lists(
    st.fixed_dictionaries({"seq": INTS, "gfn": INTS, "vcpu_id": INTS, "flags": INTS}), max_size=3
)


@st.composite
def requests(draw: st.DrawFn, role: str) -> dict[str, Any]:
    """A request that is often nearly right: mostly an op of the role, plausible fields."""
    own = sorted(op for op, roles in REQUESTS.items() if role in roles and op != "hello")
    if draw(st.integers(0, 9)) == 0:
        op = draw(st.sampled_from([*sorted(REQUESTS), "nope"]))
    else:
        op = draw(st.sampled_from(own))
    rid = draw(st.integers(0, 100) if draw(st.integers(0, 9)) else VALUES)
    msg: dict[str, Any] = {"op": op, "id": rid}
    plausible = {
        "gfns": GFN_LISTS,
        "gfn": INTS,
        "vcpu": INTS,
        "off": INTS,
        "len": INTS,
        "data": st.binary(min_size=0, max_size=16),
        "pages": st.lists(st.none() | st.just(bytes(4096)) | st.binary(max_size=4), max_size=6),
        "rsps": RSPS,
        "start": INTS,
        "count": INTS,
        "hold": st.booleans(),
        "clear": st.booleans(),
        "domid": st.sampled_from([1, 2, 0, -1, None]),
        "v": st.sampled_from([1, 2]),
        "role": st.sampled_from(["pager", "mapper", "control", "guest", "root"]),
        "takeover": st.booleans(),
        "tot_pages": INTS,
        "nr_gfns": st.integers(-1, 64),
        "vcpus": st.integers(-1, 5),
        "mmio_gfns": GFN_LISTS,
    }
    names = {n for f in REQUESTS.get(op, {}).values() for n in f.names}
    for name in sorted(names):
        how = draw(st.integers(0, 19))
        if how == 0:
            continue  # missing
        msg[name] = draw(VALUES if how == 1 else plausible.get(name, VALUES))
    if draw(st.integers(0, 9)) == 0:  # an unknown extra key, or a known one out of place
        msg[draw(st.sampled_from([*FIELD_NAMES, "zzz"]))] = draw(VALUES)
    return msg


def frames(role: str) -> st.SearchStrategy[bytes]:
    """Well-framed messages (a framing error ends the connection: those are in TAILS)."""
    return st.one_of(
        *[requests(role).map(encode_frame)] * 6,
        VALUES.map(lambda v: encode_frame({"junk": v})),
    )


TAILS = st.one_of(
    st.just(b""),
    st.binary(max_size=12),  # garbage, or a frame cut short
    st.just(b"\x00\x00\x00\x05" + msgpack.packb([1])),
)


def _is_reply_or_event(msg: dict[str, Any]) -> bool:
    if "ev" in msg:
        return msg["ev"] in EVENTS
    if msg.get("ok") is True:
        return "id" in msg
    return msg.get("ok") is False and msg.get("err") in set(Errno) and isinstance(msg["msg"], str)


@st.composite
def _who(draw: st.DrawFn) -> tuple[str, str]:
    """(socket, role): mostly a role the socket admits, sometimes one it refuses."""
    socket = draw(st.sampled_from(sorted(SOCKET_ROLES)))
    allowed = sorted(SOCKET_ROLES[socket])
    if draw(st.integers(0, 9)) == 0:
        return socket, draw(st.sampled_from(["pager", "mapper", "control", "guest"]))
    return socket, draw(st.sampled_from(allowed))


@settings(max_examples=150, deadline=None)
@given(
    who=_who(),
    hello=st.integers(0, 9).map(bool),  # mostly a hello first
    data=st.data(),
    tail=TAILS,
)
async def test_random_frames_never_crash_hv(
    who: tuple[str, str], hello: bool, data: st.DataObject, tail: bytes
) -> None:
    socket, role = who
    burst = data.draw(st.lists(frames(role), min_size=3, max_size=30), label="frames")
    hv = Hypervisor(HvConfig(nr_gfns=NR, vcpus=2, ring_size=2, mmio_gfns=(NR - 1,)))
    d = hv.domains[1]
    assert d.nominate([1, 2, 3, 4]) == [0] * 4  # the paging path is in play
    assert d.evict([1, 2, 3]) == [0] * 3
    received: list[dict[str, Any]] = []
    try:
        with trio.fail_after(10):
            ours, theirs = trio.testing.memory_stream_pair()

            async def read() -> None:
                decoder = FrameDecoder()
                while True:
                    data = await ours.receive_some(65536)
                    decoder.receive_data(data)
                    while (msg := decoder.next_message()) not in (NEED_DATA, CLOSED):
                        received.append(msg)  # type: ignore[arg-type]  # sentinels end the loop
                    if not data:
                        return

            async with trio.open_nursery() as n:
                n.start_soon(hv.serve_stream, theirs, socket)
                n.start_soon(read)
                head = b""
                if hello:
                    head = encode_frame({"op": "hello", "id": 0, "v": 1, "role": role, "domid": 1})
                try:
                    await ours.send_all(head + b"".join(burst) + tail)
                except trio.BrokenResourceError:
                    pass  # hv closed the connection (EPROTO): the rest is not read
                await trio.testing.wait_all_tasks_blocked()
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await ours.send_eof()
                await trio.testing.wait_all_tasks_blocked()
                # hv has closed its side: the reader saw EOF and the server task ended.
                assert not n.child_tasks, "the connection's server task should be gone"
        assert all(_is_reply_or_event(m) for m in received), received
        # hv answers its own bugs with EIO "internal error": none may have happened.
        assert not [m for m in received if "internal error" in str(m.get("msg"))]
        assert hv.check() == []
    finally:
        hv.close()
