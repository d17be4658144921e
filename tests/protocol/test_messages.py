"""Every message of PROTOCOL.md round-trips through the codec and its schema."""

from __future__ import annotations

import pytest

from protocol import (
    EVENTS,
    MAX_AUDIT_COUNT,
    MAX_LIST,
    MAX_PAGES_PER_FRAME,
    PAGE_SIZE,
    REPLIES,
    REQUESTS,
    Errno,
    FrameDecoder,
    LocalProtocolError,
    P2MType,
    RemoteProtocolError,
    RequestError,
    encode_frame,
    error_reply,
    make_event,
    make_request,
    ok_reply,
    parse_event,
    parse_reply,
    parse_request,
)

PAGE = bytes(range(256)) * 16
RSP = {"seq": 7, "gfn": 3, "vcpu_id": 1, "flags": 1}

#: One valid example of every request, by (op, role).
REQUEST_EXAMPLES: dict[tuple[str, str], dict] = {
    ("hello", "pager"): {"v": 1, "role": "pager", "domid": 1},
    ("hello", "guest"): {"v": 1, "role": "guest", "domid": 1},
    ("hello", "mapper"): {"v": 1, "role": "mapper", "domid": 1, "takeover": False},
    ("hello", "control"): {"v": 1, "role": "control"},
    ("nominate", "pager"): {"gfns": [1, 2, 3]},
    ("evict", "pager"): {"gfns": [1]},
    ("map", "pager"): {"gfns": [1, 2], "hold": False},
    ("map", "mapper"): {"gfns": [4], "hold": True},
    ("unmap", "pager"): {"gfns": [4]},
    ("unmap", "mapper"): {"gfns": [4]},
    ("prep", "pager"): {"gfns": [5, 6], "pages": [PAGE, None]},
    ("resume", "pager"): {"rsps": [RSP]},
    ("audit", "pager"): {"start": 0, "count": 16},
    ("audit", "control"): {"start": 0, "count": 0, "domid": 1},
    ("mark_broken", "pager"): {"gfns": [9]},
    ("accessed", "pager"): {"start": 0, "count": 64, "clear": True},
    ("accessed", "control"): {"start": 0, "count": 8, "clear": False, "domid": 1},
    ("detach", "pager"): {},
    ("detach", "control"): {"domid": 1},
    ("read", "guest"): {"vcpu": 0, "gfn": 2, "off": 100, "len": 8},
    ("write", "guest"): {"vcpu": 1, "gfn": 2, "off": 0, "data": b"abc"},
    ("decrease_reservation", "guest"): {"gfns": [1]},
    ("increase_reservation", "guest"): {"gfns": [1]},
    ("status", "control"): {},
    ("set_target", "control"): {"domid": 1, "tot_pages": 100},
    ("domain_create", "control"): {"nr_gfns": 64, "vcpus": 2, "mmio_gfns": [0]},
    ("domain_destroy", "control"): {"domid": 2},
    ("check", "control"): {},
    ("counters", "control"): {},
}

_DOMAIN = {
    "domid": 1,
    "nr_gfns": 8,
    "vcpus": 1,
    "tot_pages": 6,
    "target": 6,
    "paged_pages": 2,
    "counts": {t.name: 1 for t in P2MType},
    "ring": {"size": 64, "used": 1, "waiters": 0},
    "pager": {"attached": True, "epoch": 2, "orphaned": False},
    "paused_vcpus": [0],
}

#: One valid example of every successful reply.
REPLY_EXAMPLES: dict[str, dict] = {
    "hello": {
        "v": 1,
        "domid": 1,
        "nr_gfns": 8,
        "vcpus": 1,
        "page_size": PAGE_SIZE,
        "ring_size": 64,
        "instance": "a1",
        "epoch": 1,
    },
    "nominate": {"results": [0, "EBUSY"]},
    "evict": {"results": [0]},
    "map": {"pages": [PAGE, "ENOENT"]},
    "unmap": {"results": [0]},
    "prep": {"results": [0, "ENOMEM"]},
    "resume": {"results": ["ENOENT"]},
    "audit": {
        "types": b"\x00\x02",
        "frames": b"\x01",
        "tot_pages": 1,
        "target": 1,
        "paged_pages": 1,
    },
    "mark_broken": {"results": [0]},
    "accessed": {"bits": b"\xff"},
    "detach": {},
    "read": {"data": b"\x00" * 8},
    "write": {},
    "decrease_reservation": {"results": [0, "EAGAIN"]},
    "increase_reservation": {"results": ["EEXIST"]},
    "status": {"host": {"frames": 10, "free": 4}, "domains": [_DOMAIN]},
    "set_target": {},
    "domain_create": {"domid": 2},
    "domain_destroy": {},
    "check": {"violations": []},
    "counters": {"domains": [{"domid": 1, "counters": {"page.evicted": 3}}]},
}

EVENT_EXAMPLES = {
    "mem_event": {"reqs": [{"seq": 1, "gfn": 3, "vcpu_id": -1, "flags": 8, "p2mt": "paged"}]},
    "target": {"tot_pages": 5},
}


def _roundtrip(msg: dict) -> dict:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(msg))
    return decoder.next_message()  # type: ignore[return-value]  # a whole frame: no sentinel


def test_examples_cover_every_message() -> None:
    assert {op for op, _ in REQUEST_EXAMPLES} == set(REQUESTS)
    assert {(op, role) for op, roles in REQUESTS.items() for role in roles} == set(REQUEST_EXAMPLES)
    assert set(REPLY_EXAMPLES) == set(REPLIES)
    assert set(EVENT_EXAMPLES) == set(EVENTS)


@pytest.mark.parametrize(("op", "role"), sorted(REQUEST_EXAMPLES))
def test_request_roundtrip(op: str, role: str) -> None:
    msg = make_request(op, 42, role, **REQUEST_EXAMPLES[(op, role)])
    req = parse_request(_roundtrip(msg), role)
    assert (req.op, req.id) == (op, 42)
    for key, value in REQUEST_EXAMPLES[(op, role)].items():
        assert req.args[key] == value


@pytest.mark.parametrize("op", sorted(REPLY_EXAMPLES))
def test_reply_roundtrip(op: str) -> None:
    reply = parse_reply(op, _roundtrip(ok_reply(9, **REPLY_EXAMPLES[op])))
    assert reply["ok"] is True and reply["id"] == 9
    for key, value in REPLY_EXAMPLES[op].items():
        assert reply[key] == value


@pytest.mark.parametrize("errno", list(Errno))
def test_error_reply_roundtrip(errno: Errno) -> None:
    reply = parse_reply("nominate", _roundtrip(error_reply(3, errno, "why")))
    assert (reply["ok"], reply["err"], reply["msg"]) == (False, errno.value, "why")


@pytest.mark.parametrize("ev", sorted(EVENT_EXAMPLES))
def test_event_roundtrip(ev: str) -> None:
    name, fields = parse_event(_roundtrip(make_event(ev, **EVENT_EXAMPLES[ev])))
    assert name == ev and fields == EVENT_EXAMPLES[ev]


def _refusal(msg: dict, role: str = "pager") -> Errno:
    with pytest.raises(RequestError) as info:
        parse_request(msg, role)
    return info.value.errno


@pytest.mark.parametrize(
    ("msg", "role", "errno"),
    [
        ({"id": 1}, "pager", Errno.EINVAL),  # no op
        ({"op": 5, "id": 1}, "pager", Errno.EINVAL),  # op not a str
        ({"op": "nominate", "gfns": []}, "pager", Errno.EINVAL),  # no id
        ({"op": "nominate", "id": -1, "gfns": []}, "pager", Errno.EINVAL),
        ({"op": "nominate", "id": True, "gfns": []}, "pager", Errno.EINVAL),  # true is not an int
        ({"op": "fly", "id": 1}, "pager", Errno.ENOSYS),
        ({"op": "read", "id": 1, "vcpu": 0, "gfn": 0, "off": 0, "len": 1}, "pager", Errno.EPERM),
        ({"op": "nominate", "id": 1, "gfns": [1]}, "guest", Errno.EPERM),
        ({"op": "status", "id": 1}, "pager", Errno.EPERM),
        ({"op": "nominate", "id": 1}, "pager", Errno.EINVAL),  # missing field
        ({"op": "nominate", "id": 1, "gfns": [True]}, "pager", Errno.EINVAL),
        ({"op": "nominate", "id": 1, "gfns": [-3]}, "pager", Errno.EINVAL),
        ({"op": "nominate", "id": 1, "gfns": "1"}, "pager", Errno.EINVAL),
        ({"op": "nominate", "id": 1, "gfns": [0] * (MAX_LIST + 1)}, "pager", Errno.EINVAL),
        ({"op": "map", "id": 1, "gfns": [0] * (MAX_PAGES_PER_FRAME + 1)}, "pager", Errno.EINVAL),
        ({"op": "prep", "id": 1, "gfns": [1, 2], "pages": [None]}, "pager", Errno.EINVAL),
        ({"op": "audit", "id": 1, "start": 0, "count": MAX_AUDIT_COUNT + 1}, "pager", Errno.EINVAL),
        ({"op": "resume", "id": 1, "rsps": [{"seq": 1}]}, "pager", Errno.EINVAL),
        (
            {"op": "read", "id": 1, "vcpu": 0, "gfn": 0, "off": 4000, "len": 200},
            "guest",
            Errno.EINVAL,
        ),
        (
            {"op": "write", "id": 1, "vcpu": 0, "gfn": 0, "off": 1, "data": PAGE},
            "guest",
            Errno.EINVAL,
        ),
        (
            {"op": "write", "id": 1, "vcpu": 0, "gfn": 0, "off": 0, "data": b""},
            "guest",
            Errno.EINVAL,
        ),
        (
            {"op": "write", "id": 1, "vcpu": 0, "gfn": 0, "off": 0, "data": "text"},
            "guest",
            Errno.EINVAL,
        ),
        ({"op": "detach", "id": 1}, "control", Errno.EINVAL),  # control names the domain
    ],
)
def test_refusals_carry_the_errno_of_section_2(msg: dict, role: str, errno: Errno) -> None:
    assert _refusal(msg, role) == errno


def test_unknown_extra_keys_are_ignored() -> None:
    req = parse_request({"op": "nominate", "id": 1, "gfns": [1], "colour": "blue"}, "pager")
    assert req.args == {"gfns": [1]}


def test_optional_fields_get_defaults() -> None:
    assert parse_request({"op": "map", "id": 1, "gfns": [1]}, "pager").args["hold"] is False
    assert parse_request({"op": "hello", "id": 0, "v": 1, "role": "control"}, "control").args == {
        "v": 1,
        "role": "control",
        "domid": None,
        "takeover": False,
    }


def test_255_pages_fit_in_a_frame_and_256_do_not() -> None:
    assert len(encode_frame(ok_reply(1, pages=[PAGE] * 255))) <= 4 + (1 << 20)
    with pytest.raises(LocalProtocolError):
        encode_frame(ok_reply(1, pages=[PAGE] * 256))


def test_make_request_checks_locally() -> None:
    with pytest.raises(LocalProtocolError):
        make_request("nominate", 1, "pager", gfns="nope")


def test_bad_replies_and_events_are_remote_errors() -> None:
    with pytest.raises(RemoteProtocolError):
        parse_reply("nominate", {"id": 1, "ok": True})
    with pytest.raises(RemoteProtocolError):
        parse_reply("nominate", {"id": 1})
    with pytest.raises(RemoteProtocolError):
        parse_event({"ev": "weather"})
    with pytest.raises(RemoteProtocolError):
        parse_event({"ev": "target", "tot_pages": "many"})
