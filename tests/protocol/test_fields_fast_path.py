"""`Fields.check` runs a generated function for the common case; whatever the message, it
must accept, normalise and reject exactly as checking field by field does."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.messages import ERROR_REPLY, EVENTS, REPLIES, REQUESTS
from protocol.schema import Bin, Fields, Int, Invalid, Str

_ALL: dict[str, Fields] = {f"reply {op}": f for op, f in REPLIES.items()}
_ALL["error reply"] = ERROR_REPLY
_ALL |= {f"event {ev}": f for ev, f in EVENTS.items()}
for _op, _by_role in REQUESTS.items():
    _ALL |= {f"request {_op} ({role})": f for role, f in _by_role.items()}
_ALL["bounds"] = Fields({"a": Int(-2, 3), "b": Bin(2, 3)}, {"c": (Int(5), 7), "d": (Str(), "x")})

_VALUES = st.one_of(
    st.integers(-3, 5),
    st.sampled_from([2**32, 4095, 4096, 4097, True, False, None, 1.0, "EBUSY", "read", ""]),
    st.binary(min_size=0, max_size=4),
    st.sampled_from([bytes(4096), bytearray(3), [], [1, 2], {"seq": 1}]),
)


def _reference(f: Fields, msg: dict[str, Any]) -> object:
    try:
        return f._check_each(msg)
    except Invalid as exc:
        return ("Invalid", str(exc))


def _checked(f: Fields, msg: dict[str, Any]) -> object:
    try:
        return f.check(msg)
    except Invalid as exc:
        return ("Invalid", str(exc))


@pytest.mark.parametrize("name", sorted(_ALL))
@given(data=st.data())
def test_generated_check_agrees_with_each_field(name: str, data: st.DataObject) -> None:
    f = _ALL[name]
    names = [*f.required, *f.optional]
    msg = {n: data.draw(_VALUES) for n in names if data.draw(st.booleans()) or n in f.required}
    if names and data.draw(st.booleans()):
        msg.pop(data.draw(st.sampled_from(names)), None)
    assert _checked(f, msg) == _reference(f, msg)


def test_the_common_case_is_the_generated_one() -> None:
    f = _ALL["bounds"]
    assert f.check({"a": 3, "b": b"xy", "z": 1}) == {"a": 3, "b": b"xy", "c": 7, "d": "x"}
    assert f._fast({"a": -2, "b": b"xyz", "c": 5}) == {"a": -2, "b": b"xyz", "c": 5, "d": "x"}
    for bad in ({"a": 4, "b": b"xy"}, {"a": True, "b": b"xy"}, {"a": 0, "b": b"x"}):
        with pytest.raises(Exception):  # noqa: B017 - any doubt leaves it to _check_each
            f._fast(bad)
        with pytest.raises(Invalid):
            f.check(bad)


def test_checking_a_message_builds_no_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fields compiles its check when built: building one per message (a failed reply's,
    # say) would cost far more than the check saves.
    from protocol import schema
    from protocol.messages import error_reply, ok_reply, parse_reply, parse_request

    def no_compile(*args: Any) -> Any:
        raise AssertionError("a Fields was built while checking a message")

    monkeypatch.setattr(schema, "_compile", no_compile)
    parse_reply("read", error_reply(1, "EIO", "lost"))
    parse_reply("read", ok_reply(1, data=b"x"))
    parse_request({"op": "read", "id": 1, "vcpu": 0, "gfn": 1, "off": 0, "len": 1}, "guest")
