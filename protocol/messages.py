"""Every message of wire protocol v1 (PROTOCOL.md §3-§9) as a schema, and how to check one.

`REQUESTS[op][role]` is the field set a role may send with `op`; `REPLIES[op]` the fields
of a successful reply; `EVENTS[ev]` the fields of an event. `parse_request` turns a decoded
map into a `Request` or raises `RequestError` carrying the errno §2 prescribes:

- `op` or `id` missing or of the wrong type, or a field missing or wrongly typed: EINVAL;
- an unknown `op`: ENOSYS;
- a known `op` from a role that may not use it: EPERM.

Semantic checks that need state (a gfn past `nr_gfns`, a vCPU id out of range) belong to
the server, which answers EINVAL for them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from .constants import (
    MAX_AUDIT_COUNT,
    MAX_LIST,
    MAX_PAGES_PER_FRAME,
    PAGE_SIZE,
    Errno,
    P2MType,
    Role,
)
from .errors import LocalProtocolError, RemoteProtocolError, RequestError
from .schema import Bin, Bool, Fields, Int, Invalid, ListOf, Map, Nullable, OneOf, Str

GFN = Int(0)
GFNS = ListOf(GFN, MAX_LIST)
PAGE_GFNS = ListOf(GFN, MAX_PAGES_PER_FRAME)
ERRNO = Str(frozenset(Errno))
P2MT = Str(frozenset(t.name for t in P2MType))
RESULTS = ListOf(OneOf((Int(0, 0), ERRNO)), MAX_LIST)
COUNT = Int(0, MAX_AUDIT_COUNT)

#: One response in `resume` (Xen's `mem_event_response_t`).
RSP = Map(Fields({"seq": Int(1), "gfn": GFN, "vcpu_id": Int(-1), "flags": Int(0)}))
#: One request in a `mem_event` event (Xen's `mem_event_request_t`).
REQ = Map(Fields({"seq": Int(1), "gfn": GFN, "vcpu_id": Int(-1), "flags": Int(0), "p2mt": P2MT}))

_PAGER = frozenset({Role.pager})
_MAPPERS = frozenset({Role.pager, Role.mapper})
_GUEST = frozenset({Role.guest})
_CONTROL = frozenset({Role.control})
_ALL = frozenset(Role)


def _for(roles: frozenset[Role], fields: Fields) -> dict[str, Fields]:
    return {r.value: fields for r in roles}


_NONE = Fields()
_DOMID = Fields({"domid": Int(0)})
_RANGE = {"start": GFN, "count": COUNT}

#: op -> role -> fields of the request (besides `op` and `id`).
REQUESTS: dict[str, dict[str, Fields]] = {
    "hello": _for(
        _ALL,
        Fields(
            {"v": Int(), "role": Str()},
            {"domid": (Int(0), None), "takeover": (Bool(), False)},
        ),
    ),
    # §6 pager operations
    "nominate": _for(_PAGER, Fields({"gfns": GFNS})),
    "evict": _for(_PAGER, Fields({"gfns": GFNS})),
    "map": _for(_MAPPERS, Fields({"gfns": PAGE_GFNS}, {"hold": (Bool(), False)})),
    "unmap": _for(_MAPPERS, Fields({"gfns": GFNS})),
    "prep": _for(
        _PAGER,
        Fields(
            {
                "gfns": PAGE_GFNS,
                "pages": ListOf(Nullable(Bin()), MAX_PAGES_PER_FRAME),
            }
        ),
    ),
    "resume": _for(_PAGER, Fields({"rsps": ListOf(RSP, MAX_LIST)})),
    # audit and accessed are also open to control, for status tools and the stress harness.
    "audit": _for(_PAGER | _CONTROL, Fields(_RANGE, {"domid": (Int(0), None)})),
    "mark_broken": _for(_PAGER, Fields({"gfns": GFNS})),
    "accessed": {
        Role.pager.value: Fields(_RANGE, {"clear": (Bool(), False)}),
        Role.control.value: Fields(_RANGE, {"clear": (Bool(), False), "domid": (Int(0), None)}),
    },
    "detach": {Role.pager.value: _NONE, Role.control.value: _DOMID},
    # §7 guest operations
    "read": _for(
        _GUEST,
        Fields(
            {"vcpu": Int(0), "gfn": GFN, "off": Int(0, PAGE_SIZE - 1), "len": Int(1, PAGE_SIZE)}
        ),
    ),
    "write": _for(
        _GUEST,
        Fields(
            {"vcpu": Int(0), "gfn": GFN, "off": Int(0, PAGE_SIZE - 1), "data": Bin(1, PAGE_SIZE)}
        ),
    ),
    "decrease_reservation": _for(_GUEST, Fields({"gfns": GFNS})),
    "increase_reservation": _for(_GUEST, Fields({"gfns": GFNS})),
    # §9 control operations
    "status": _for(_CONTROL, _NONE),
    "set_target": _for(_CONTROL, Fields({"domid": Int(0), "tot_pages": Int(0)})),
    "domain_create": _for(
        _CONTROL,
        Fields(
            {"nr_gfns": Int(1), "vcpus": Int(1, 4096)},
            {"mmio_gfns": (GFNS, [])},
        ),
    ),
    "domain_destroy": _for(_CONTROL, _DOMID),
    "check": _for(_CONTROL, _NONE),
    # Added beyond §9 (which allows more control ops): hv's event counters per domain.
    "counters": _for(_CONTROL, _NONE),
}


def _cross_check(op: str, args: dict[str, Any]) -> None:
    """Rules that relate two fields of one request."""
    if op == "read" and args["off"] + args["len"] > PAGE_SIZE:
        raise Invalid("off + len exceeds the page")
    if op == "write" and args["off"] + len(args["data"]) > PAGE_SIZE:
        raise Invalid("off + len(data) exceeds the page")
    if op == "prep" and len(args["pages"]) != len(args["gfns"]):
        raise Invalid("prep needs one element of pages per gfn")


def _counter_map(v: Any) -> dict[str, int]:
    """A map of counter names to ints (names are open-ended, so not a fixed Fields)."""
    if not isinstance(v, dict) or not all(
        isinstance(k, str) and isinstance(n, int) and not isinstance(n, bool) for k, n in v.items()
    ):
        raise Invalid("expected a map of str to int")
    return v


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v >= 0


def _seconds(v: Any) -> float:
    if not _is_num(v):
        raise Invalid("expected a non-negative number of seconds")
    return float(v)


def _vcpu_stats(v: Any) -> list[dict[str, Any]]:
    """Per vCPU pauses: vcpu, paused (now), pauses, paused_s and longest_s (seconds)."""
    if not isinstance(v, list) or len(v) > MAX_LIST:
        raise Invalid("expected a list of per-vCPU pause counts")
    for e in v:
        if not (
            isinstance(e, dict)
            and _is_num(e.get("vcpu"))
            and isinstance(e.get("paused"), bool)
            and _is_num(e.get("pauses"))
            and _is_num(e.get("paused_s"))
            and _is_num(e.get("longest_s"))
        ):
            raise Invalid("expected vcpu, paused, pauses, paused_s, longest_s per vCPU")
    return v


def _number_map(v: Any) -> dict[str, float]:
    """A map of names to non-negative numbers (a latency summary in ms)."""
    if not isinstance(v, dict) or not all(isinstance(k, str) and _is_num(n) for k, n in v.items()):
        raise Invalid("expected a map of str to numbers")
    return v


def _bins(v: Any) -> list[list[float]]:
    """Histogram bins: [low, high, count] each."""
    if not isinstance(v, list) or len(v) > MAX_LIST:
        raise Invalid("expected a list of [low, high, count] bins")
    for b in v:
        if not (isinstance(b, list) and len(b) == 3 and all(_is_num(x) for x in b)):
            raise Invalid("expected [low, high, count] per bin")
    return v


_COUNTERS = {"tot_pages": Int(0), "target": Int(0), "paged_pages": Int(0)}
_STATUS_DOMAIN = Map(
    Fields(
        {
            "domid": Int(0),
            "nr_gfns": Int(0),
            "vcpus": Int(0),
            "tot_pages": Int(0),
            "target": Int(0),
            "paged_pages": Int(0),
            "counts": Map(Fields({t.name: Int(0) for t in P2MType})),
            "ring": Map(Fields({"size": Int(0), "used": Int(0), "waiters": Int(0)})),
            "pager": Map(
                Fields(
                    {"attached": Bool(), "epoch": Int(0), "orphaned": Bool()},
                    {"uptime_s": (_seconds, 0.0)},  # since the current pager attached
                )
            ),
            "paused_vcpus": ListOf(Int(0), MAX_LIST),
        },
        {"vcpu_stats": (_vcpu_stats, [])},
    )
)

#: op -> fields of a successful reply (besides `id` and `ok`).
REPLIES: dict[str, Fields] = {
    "hello": Fields(
        {
            "v": Int(),
            "domid": Nullable(Int(0)),
            "nr_gfns": Int(0),
            "vcpus": Int(0),
            "page_size": Int(1),
            "ring_size": Int(0),
            "instance": Str(),
        },
        {"epoch": (Int(1), None)},
    ),
    "nominate": Fields({"results": RESULTS}),
    "evict": Fields({"results": RESULTS}),
    "map": Fields(
        {"pages": ListOf(OneOf((Bin(PAGE_SIZE, PAGE_SIZE), ERRNO)), MAX_PAGES_PER_FRAME)}
    ),
    "unmap": Fields({"results": RESULTS}),
    "prep": Fields({"results": RESULTS}),
    "resume": Fields({"results": RESULTS}),
    "audit": Fields({"types": Bin(), "frames": Bin(), **_COUNTERS}),
    "mark_broken": Fields({"results": RESULTS}),
    "accessed": Fields({"bits": Bin()}),
    "detach": _NONE,
    "read": Fields({"data": Bin(1, PAGE_SIZE)}),
    "write": _NONE,
    "decrease_reservation": Fields({"results": RESULTS}),
    "increase_reservation": Fields({"results": RESULTS}),
    "status": Fields(
        {
            "host": Map(Fields({"frames": Int(0), "free": Int(0)})),
            "domains": ListOf(_STATUS_DOMAIN, MAX_LIST),
        }
    ),
    "set_target": _NONE,
    "domain_create": Fields({"domid": Int(0)}),
    "domain_destroy": _NONE,
    "check": Fields({"violations": ListOf(Str(), MAX_LIST)}),
    "counters": Fields(
        {
            "domains": ListOf(
                Map(
                    Fields(
                        {"domid": Int(0), "counters": _counter_map},
                        {
                            "vcpus": (_vcpu_stats, []),
                            "populate_ms": (_number_map, {}),
                            "populate_hist_ms": (_bins, []),
                        },
                    )
                ),
                MAX_LIST,
            )
        }
    ),
}

#: The fields of a failed reply, to any op (besides `id` and `ok`).
ERROR_REPLY: Final = Fields({"err": ERRNO, "msg": Str()})

#: ev -> fields of an event sent by hv.
EVENTS: dict[str, Fields] = {
    "mem_event": Fields({"reqs": ListOf(REQ, MAX_LIST)}),
    "target": Fields({"tot_pages": Int(0)}),
}


class Request(NamedTuple):
    """A checked request: its op, its id and its fields (defaults filled in). Immutable, as
    a frozen dataclass, at a third of its construction cost (one per request served)."""

    op: str
    id: int
    args: dict[str, Any]


def request_id(msg: Mapping[str, Any]) -> int | None:
    """The id to answer a message with: its own if well-formed, else None."""
    rid = msg.get("id")
    return rid if isinstance(rid, int) and not isinstance(rid, bool) and rid >= 0 else None


def parse_request(msg: Mapping[str, Any], role: str) -> Request:
    """Check a request from a peer that said hello as `role`; RequestError on refusal."""
    return Request(*_check_request(msg, role))


def _check_request(msg: Mapping[str, Any], role: str) -> tuple[str, int, dict[str, Any]]:
    """`parse_request`'s checks: (op, id, args), or RequestError."""
    op = msg.get("op")
    if not isinstance(op, str):
        raise RequestError("missing or non-string 'op'", Errno.EINVAL)
    rid = request_id(msg)
    if rid is None:
        raise RequestError("missing or invalid 'id' (an int >= 0)", Errno.EINVAL)
    by_role = REQUESTS.get(op)
    if by_role is None:
        raise RequestError(f"unknown op {op!r}", Errno.ENOSYS)
    fields = by_role.get(role)
    if fields is None:
        raise RequestError(f"op {op!r} is not allowed for role {role!r}", Errno.EPERM)
    try:
        args = fields.check(msg)
        _cross_check(op, args)
    except Invalid as exc:
        raise RequestError(f"{op}: {exc}", Errno.EINVAL) from None
    return op, rid, args


def make_request(op: str, rid: int, role: str, /, **args: Any) -> dict[str, Any]:
    """Build a request map, checking it as the server will (LocalProtocolError if wrong)."""
    msg = {"op": op, "id": rid, **args}
    try:
        _check_request(msg, role)
    except RequestError as exc:
        raise LocalProtocolError(str(exc)) from None
    return msg


def ok_reply(rid: int | None, **fields: Any) -> dict[str, Any]:
    """A successful reply."""
    return {"id": rid, "ok": True, **fields}


def error_reply(rid: int | None, errno: Errno | str, msg: str) -> dict[str, Any]:
    """A failed reply with its errno name and a sentence for humans."""
    return {"id": rid, "ok": False, "err": str(errno), "msg": msg}


def make_event(ev: str, **fields: Any) -> dict[str, Any]:
    """An event map (no `id`)."""
    return {"ev": ev, **fields}


def parse_reply(op: str, msg: Mapping[str, Any]) -> dict[str, Any]:
    """Check a reply to `op` as a client; RemoteProtocolError if the server broke §3."""
    if not isinstance(msg.get("ok"), bool):
        raise RemoteProtocolError("reply without a boolean 'ok'")
    try:
        fields = REPLIES[op] if msg["ok"] else ERROR_REPLY
        return {**msg, **fields.check(msg)}
    except Invalid as exc:
        raise RemoteProtocolError(f"reply to {op}: {exc}") from None


def parse_event(msg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Check an event; RemoteProtocolError if it is not one of §6's."""
    ev = msg.get("ev")
    if not isinstance(ev, str) or (fields := EVENTS.get(ev)) is None:
        raise RemoteProtocolError(f"unknown event {ev!r}")
    try:
        return ev, fields.check(msg)
    except Invalid as exc:
        raise RemoteProtocolError(f"event {ev}: {exc}") from None
