"""Which replacement policy the pager runs: a built-in by name, or a plug-in class named
`package.module:Class`, checked against the policy interface before it is used.

The built-ins live in `pager.policies`: `xenpaging` (the original round-robin), `clock`
(second chance), `car` (Clock with Adaptive Replacement) and `clock2q` (2Q with a
counting clock). A policy knows which gfns are
paged out (the pager tells it) and picks resident gfns to nominate. It never talks to hv
itself except through the `accessed` callable it is given (the EPT accessed-bit analogue,
PROTOCOL.md §6). The interface is `pager.policies.base.Policy`; docs/policy.md explains it.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Final

from .policies.base import Accessed, Policy, PolicyBase
from .policies.car import CAR_RECENT_FAULTS, CAR_WINDOW, CarPolicy
from .policies.clock import CLOCK_WINDOW, ClockPolicy
from .policies.clock2q import Clock2QPolicy
from .policies.xenpaging import XEN_MRU_SIZE, XenpagingPolicy

POLICIES: Final = ("xenpaging", "clock", "car", "clock2q")

#: What a plug-in class must have: the pager calls these (base.Policy's docstrings).
_METHODS: Final = ("paged_out", "paged_in", "dropped")


class PolicyLoadError(ValueError):
    """A policy spec that names no built-in and no usable class: one line for the user."""


async def _no_accessed(start: int, count: int) -> bytes:
    return bytes((count + 7) // 8)


def _cwd_on_path() -> None:
    # `python -m pager` finds modules in the current directory; the `xpemu` script does
    # not. A plug-in next to the user (`mypolicy:MyPolicy`) should load either way.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def _interface_problems(cls: object) -> list[str]:
    """What `cls` lacks of the policy interface, one phrase each; empty when it fits."""
    if not inspect.isclass(cls):
        return [f"{cls!r} is not a class"]
    problems = []
    choose = getattr(cls, "choose", None)
    if not inspect.iscoroutinefunction(choose):
        problems.append("no `async def choose(self, n, skip)`")
    for m in _METHODS:
        if not callable(getattr(cls, m, None)):
            problems.append(f"no `{m}` method")
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):  # a class built in C: nothing to check
        return problems
    try:
        sig.bind(1, _no_accessed)
    except TypeError:
        problems.append(f"its constructor does not take (nr_gfns, accessed): {cls.__name__}{sig}")
    paged_in = getattr(cls, "paged_in", None)
    if callable(paged_in):
        try:
            inspect.signature(paged_in).bind(None, 0, mru=False)
        except TypeError:
            problems.append("`paged_in` does not take (gfn, *, mru)")
        except ValueError:
            pass
    return problems


def load_policy_class(spec: str) -> type:
    """The class `package.module:Class` names, checked against the interface (PolicyLoadError)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise PolicyLoadError(
            f"unknown policy {spec!r}: one of {', '.join(POLICIES)}, or package.module:Class"
        )
    _cwd_on_path()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PolicyLoadError(f"policy {spec!r}: cannot import {module_name}: {exc}") from None
    except Exception as exc:  # the user's module raised while loading
        raise PolicyLoadError(
            f"policy {spec!r}: importing {module_name} raised {type(exc).__name__}: {exc}"
        ) from None
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PolicyLoadError(f"policy {spec!r}: {module_name} has no {attr}")
        obj = getattr(obj, part)
    problems = _interface_problems(obj)
    if problems:
        raise PolicyLoadError(
            f"policy {spec!r} does not implement the pager's policy interface "
            f"(docs/policy.md): {'; '.join(problems)}"
        )
    assert isinstance(obj, type)
    return obj


def check_policy(spec: str) -> None:
    """Raise PolicyLoadError unless `spec` names a built-in or a usable plug-in class."""
    if spec not in POLICIES:
        load_policy_class(spec)


def make_policy(
    name: str, nr_gfns: int, accessed: Accessed, *, mru_size: int | None = None
) -> Policy:
    """The policy `name` names: a built-in (one of POLICIES) or `package.module:Class`
    (constructed as `Class(nr_gfns, accessed)`); PolicyLoadError (a ValueError) otherwise."""
    if name == "xenpaging":
        return XenpagingPolicy(nr_gfns, mru_size)
    if name == "clock":
        return ClockPolicy(nr_gfns, accessed)
    if name == "car":
        return CarPolicy(nr_gfns, accessed)
    if name == "clock2q":
        return Clock2QPolicy(nr_gfns, accessed)
    cls: Callable[[int, Accessed], Policy] = load_policy_class(name)
    return cls(nr_gfns, accessed)


def policy_label(spec: str) -> str:
    """A short name for tables: the built-in's name, or a plug-in's class name."""
    return spec.rpartition(":")[2] if ":" in spec else spec


__all__ = [
    "CAR_RECENT_FAULTS",
    "CAR_WINDOW",
    "CLOCK_WINDOW",
    "POLICIES",
    "XEN_MRU_SIZE",
    "Accessed",
    "CarPolicy",
    "Clock2QPolicy",
    "ClockPolicy",
    "Policy",
    "PolicyBase",
    "PolicyLoadError",
    "XenpagingPolicy",
    "check_policy",
    "load_policy_class",
    "make_policy",
    "policy_label",
]
