"""Field checkers: small composable validators for message fields.

Each checker takes a decoded msgpack value and returns it (possibly normalised) or raises
`Invalid` with a sentence naming what is wrong. msgpack `true` is not an int here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class Invalid(Exception):
    """A field failed its check; the text says which and why."""


Checker = Callable[[Any], Any]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True, slots=True)
class Int:
    """An integer (never a bool) within [lo, hi]."""

    lo: int | None = None
    hi: int | None = None

    def __call__(self, v: Any) -> int:
        if (
            type(v) is int
            and (self.lo is None or v >= self.lo)
            and (self.hi is None or v <= self.hi)
        ):
            return v  # the common case, in one test
        if not _is_int(v):
            raise Invalid(f"expected an int, got {type(v).__name__}")
        if self.lo is not None and v < self.lo:
            raise Invalid(f"{v} is below {self.lo}")
        if self.hi is not None and v > self.hi:
            raise Invalid(f"{v} is above {self.hi}")
        return v


@dataclass(frozen=True, slots=True)
class Bool:
    """A msgpack boolean."""

    def __call__(self, v: Any) -> bool:
        if not isinstance(v, bool):
            raise Invalid(f"expected a bool, got {type(v).__name__}")
        return v


@dataclass(frozen=True, slots=True)
class Str:
    """A text string, optionally one of a fixed set."""

    choices: frozenset[str] | None = None

    def __call__(self, v: Any) -> str:
        if not isinstance(v, str):
            raise Invalid(f"expected a str, got {type(v).__name__}")
        if self.choices is not None and v not in self.choices:
            raise Invalid(f"{v!r} is not one of {sorted(self.choices)}")
        return v


@dataclass(frozen=True, slots=True)
class Bin:
    """A msgpack bin, of an exact size or within [lo, hi] bytes."""

    lo: int = 0
    hi: int | None = None

    def __call__(self, v: Any) -> bytes:
        if not isinstance(v, bytes):
            raise Invalid(f"expected bin, got {type(v).__name__}")
        if len(v) < self.lo or (self.hi is not None and len(v) > self.hi):
            raise Invalid(f"bin of {len(v)} bytes is outside [{self.lo}, {self.hi}]")
        return v


@dataclass(frozen=True, slots=True)
class Nullable:
    """nil or what the inner checker accepts."""

    inner: Checker

    def __call__(self, v: Any) -> Any:
        return None if v is None else self.inner(v)


@dataclass(frozen=True, slots=True)
class OneOf:
    """The first of several checkers that accepts the value."""

    options: tuple[Checker, ...]

    def __call__(self, v: Any) -> Any:
        errors = []
        for check in self.options:
            try:
                return check(v)
            except Invalid as exc:
                errors.append(str(exc))
        raise Invalid(" or ".join(errors))


@dataclass(frozen=True, slots=True)
class ListOf:
    """A list of at most `max_len` elements, each checked."""

    elem: Checker
    max_len: int

    def __call__(self, v: Any) -> list[Any]:
        if not isinstance(v, list):
            raise Invalid(f"expected a list, got {type(v).__name__}")
        if len(v) > self.max_len:
            raise Invalid(f"list of {len(v)} elements exceeds {self.max_len}")
        if v and _all_accepted(self.elem, v):
            return list(v)
        out = []
        for i, e in enumerate(v):
            try:
                out.append(self.elem(e))
            except Invalid as exc:
                raise Invalid(f"[{i}]: {exc}") from None
        return out


def _all_accepted(elem: Checker, v: list[Any]) -> bool:
    """True when every element of `v` surely passes `elem`, checked a whole list at a time
    (the common lists: gfns, pages, results). False means "look at each element", which
    also finds the first bad one for the message."""
    if isinstance(elem, OneOf):
        return any(_all_accepted(option, v) for option in elem.options)
    if isinstance(elem, Int):
        if set(map(type, v)) != {int}:
            return False
        return (elem.lo is None or min(v) >= elem.lo) and (elem.hi is None or max(v) <= elem.hi)
    if isinstance(elem, Bin):
        if set(map(type, v)) != {bytes}:
            return False
        sizes = set(map(len, v))
        return min(sizes) >= elem.lo and (elem.hi is None or max(sizes) <= elem.hi)
    return False


@dataclass(frozen=True, slots=True)
class Fields:
    """A set of named fields: required ones, and optional ones with defaults."""

    required: Mapping[str, Checker] = field(default_factory=dict)
    optional: Mapping[str, tuple[Checker, Any]] = field(default_factory=dict)
    _fast: Callable[[Mapping[str, Any]], dict[str, Any]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_fast", _compile(self.required, self.optional))

    def check(self, msg: Mapping[str, Any]) -> dict[str, Any]:
        """Return the checked fields (unknown extra keys are ignored, as §2 says)."""
        try:  # every field good: no per-field bookkeeping (the common case)
            return self._fast(msg)
        except (KeyError, Invalid, _Slow):
            return self._check_each(msg)  # to say which field is wrong, and why

    def _check_each(self, msg: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, checker in self.required.items():
            if name not in msg:
                raise Invalid(f"missing field {name!r}")
            out[name] = _check_named(name, checker, msg[name])
        for name, (checker, default) in self.optional.items():
            out[name] = _check_named(name, checker, msg[name]) if name in msg else default
        return out

    @property
    def names(self) -> Sequence[str]:
        return [*self.required, *self.optional]


class _Slow(Exception):
    """A field the generated check does not accept at once: `_check_each` judges it."""


def _compile(
    required: Mapping[str, Checker], optional: Mapping[str, tuple[Checker, Any]]
) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """`Fields.check`'s common case as one generated function (as `dataclasses` writes
    `__init__`): `Int` and `Bin` fields tested inline, other checkers called; any doubt
    raises (`_Slow`, `KeyError`, `Invalid`) and the caller checks field by field, which
    decides and says why. A message of four ints: one call instead of five."""
    env: dict[str, Any] = {"_Slow": _Slow}
    body: list[str] = []
    names: list[tuple[str, str]] = []
    fields = [(n, c, False, None) for n, c in required.items()]
    fields += [(n, c, True, d) for n, (c, d) in optional.items()]
    for i, (name, checker, is_optional, default) in enumerate(fields):
        var, indent = f"v{i}", "    "
        if is_optional:
            env[f"d{i}"] = default
            body += [f"    {var} = d{i}", f"    if {name!r} in msg:"]
            indent = "        "
        body.append(f"{indent}{var} = msg[{name!r}]")
        body += [indent + line for line in _inline(var, checker, env, i)]
        names.append((name, var))
    ret = ", ".join(f"{name!r}: {var}" for name, var in names)
    src = "def check(msg):\n" + "".join(line + "\n" for line in body) + f"    return {{{ret}}}\n"
    exec(src, env)  # the source is built above from the checkers' parameters alone
    fn: Callable[[Mapping[str, Any]], dict[str, Any]] = env["check"]
    return fn


def _inline(var: str, checker: Checker, env: dict[str, Any], i: int) -> list[str]:
    """Lines accepting `var` for `checker` (raising `_Slow` when in doubt)."""
    if type(checker) is Int:
        cond = [f"type({var}) is not int"]
        if checker.lo is not None:
            cond.append(f"{var} < {checker.lo!r}")
        if checker.hi is not None:
            cond.append(f"{var} > {checker.hi!r}")
        return [f"if {' or '.join(cond)}: raise _Slow"]
    if type(checker) is Bin:
        cond = [f"type({var}) is not bytes", f"len({var}) < {checker.lo!r}"]
        if checker.hi is not None:
            cond.append(f"len({var}) > {checker.hi!r}")
        return [f"if {' or '.join(cond)}: raise _Slow"]
    env[f"c{i}"] = checker
    return [f"{var} = c{i}({var})"]


def _check_named(name: str, checker: Checker, value: Any) -> Any:
    try:
        return checker(value)
    except Invalid as exc:
        raise Invalid(f"field {name!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Map:
    """A nested map checked by `Fields`."""

    fields: Fields

    def __call__(self, v: Any) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise Invalid(f"expected a map, got {type(v).__name__}")
        return self.fields.check(v)
