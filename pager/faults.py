"""Seeded fault injection for the pager: crash points and store faults.

The same SPEC string is accepted by ``python -m pager --faults SPEC`` and by the
``XPEMU_FAULTS`` environment variable (``--faults`` wins when both are given).

Grammar (items separated by commas, whitespace ignored)::

    SPEC    := ITEM ("," ITEM)*
    ITEM    := "seed=" INT                        seed of every probabilistic item (default 0)
             | POINT TRIGGER                      crash the process at a named point
             | "store." OP "=" ACTION TRIGGER     make a store operation fail
    TRIGGER := "@" N                              the N-th pass only (N >= 1)
             | "@" N "+"                          every pass from the N-th on
             | "%" P                              each pass with probability P (0 < P <= 1)
    OP      := write | fsync | read | commit
    ACTION  := ENOSPC | EIO                       (any OP: the operation raises that OSError)
             | corrupt                            (read only: one byte of the data read flips)

Store faults act on the pages file through a `Disk` wrapper (pager/store_faults.py): a
pass of ``write`` is one disk phase's `pwritev` (a group of page-out batches and the frees
riding with it, or a free on its own); ``fsync`` and ``commit`` are each counted on every
sync of the pages file (the sync is the commit); ``read`` is each slot read.

Crash points (the `CrashPoint` enumeration; ``CRASH_POINTS`` lists their names), in
pipeline order:

- page-out: ``after_nominate``, ``after_map``, ``after_write``, ``after_fsync``,
  ``after_index_commit``, ``after_evict``;
- page-in: ``after_read``, ``after_prep``, ``before_resume``, ``after_resume``. A page-in
  whose pages are all read sends ``prep`` and ``resume`` back to back in one write, so
  there the order is ``before_resume`` (neither sent: the vCPU still waits), ``after_prep``
  (its answer came; ``resume`` is sent too), ``after_resume``; otherwise (a lost copy, hv
  short of frames) the pager waits for ``prep``'s answer first and the order is as listed;
- recovery: ``after_audit`` (store open, audit done, nothing reconciled),
  ``after_reconcile`` (stale rows freed, lost pages marked, before adoption and serving).

Examples: ``after_write@3`` (die on the 3rd pass through after_write),
``seed=7,after_evict%0.05`` (each pass dies with probability 5 %),
``store.write=ENOSPC@10+`` (the disk is full from the 10th slot write on),
``store.read=corrupt@5`` (the 5th slot read returns a flipped byte),
``store.fsync=EIO%0.01``.

A crash ends the process at once with SIGKILL semantics: ``os.kill(getpid(), SIGKILL)``,
never through cleanup code. In-process tests inject ``raise_simulated_crash`` instead, which
raises ``SimulatedCrash`` (a BaseException): the pager's task is abandoned without paging
in, detaching or closing the store cleanly (the store is only dropped, as the kernel would
drop a dead process's file descriptors).
"""

from __future__ import annotations

import errno as _errno
import os
import random
import re
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

import structlog

log = structlog.get_logger("pager.faults")


class CrashPoint(StrEnum):
    """The named crash points, in pipeline order (see the module docstring), each with the
    `phase` it belongs to (``pageout``, ``pagein`` or ``recovery``). The pager passes only
    these to `Faults.hit`; a spec may arm only these."""

    phase: str

    def __new__(cls, value: str, phase: str) -> CrashPoint:
        member = str.__new__(cls, value)
        member._value_ = value
        member.phase = phase
        return member

    after_nominate = ("after_nominate", "pageout")
    after_map = ("after_map", "pageout")
    after_write = ("after_write", "pageout")
    after_fsync = ("after_fsync", "pageout")
    after_index_commit = ("after_index_commit", "pageout")
    after_evict = ("after_evict", "pageout")
    after_read = ("after_read", "pagein")
    after_prep = ("after_prep", "pagein")
    before_resume = ("before_resume", "pagein")
    after_resume = ("after_resume", "pagein")
    after_audit = ("after_audit", "recovery")
    after_reconcile = ("after_reconcile", "recovery")


#: The crash points' names, in pipeline order (derived from `CrashPoint`).
CRASH_POINTS: Final[tuple[str, ...]] = tuple(p.value for p in CrashPoint)

_POINT_SET: Final = frozenset(CrashPoint)

#: Store operations that can be made to fail.
STORE_OPS: Final = ("write", "fsync", "read", "commit")

#: What a store fault does.
STORE_ACTIONS: Final = ("ENOSPC", "EIO", "corrupt")

#: Environment variable read when no --faults is given.
ENV_VAR: Final = "XPEMU_FAULTS"

_ITEM = re.compile(
    r"^(?:store\.(?P<op>[a-z]+)=(?P<action>[A-Za-z]+)|(?P<point>[a-z_]+))"
    r"(?:@(?P<nth>\d+)(?P<plus>\+)?|%(?P<prob>[0-9.eE+-]+))$"
)


class FaultSpecError(ValueError):
    """A fault SPEC that does not follow the grammar; the message says which item and why."""


class SimulatedCrash(BaseException):
    """Raised by `raise_simulated_crash`: an in-process stand-in for SIGKILL.

    A BaseException so that no `except Exception` on the way up can swallow it.
    """

    def __init__(self, point: str) -> None:
        super().__init__(point)
        self.point = point


def kill_self(point: str) -> None:
    """The production crash action: SIGKILL ourselves, no cleanup, no flush of anything."""
    log.warning("fault.crash", point=point)
    os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)  # unreachable unless SIGKILL is somehow blocked: still no cleanup


def raise_simulated_crash(point: str) -> None:
    """The in-process crash action used by tests."""
    log.warning("fault.crash", point=point, simulated=True)
    raise SimulatedCrash(point)


@dataclass(slots=True)
class _Trigger:
    nth: int | None = None
    plus: bool = False
    prob: float | None = None
    rng: random.Random | None = None
    passes: int = 0

    def fires(self) -> bool:
        self.passes += 1
        if self.prob is not None:
            assert self.rng is not None
            return self.rng.random() < self.prob
        assert self.nth is not None
        return self.passes >= self.nth if self.plus else self.passes == self.nth


@dataclass(slots=True)
class _StoreFault:
    action: str
    trigger: _Trigger


@dataclass
class Faults:
    """A parsed fault spec: crash points and store faults, with their pass counters.

    `hit(point)` is called by the pipelines at each crash point, always on the event
    loop; `store_fault(op)` by the store's fault wrapper before each operation (also on
    the event loop; the lock is for callers in other threads).
    """

    spec: str = ""
    crash: Callable[[str], None] = kill_self
    seed: int = 0
    _points: dict[CrashPoint, list[_Trigger]] = field(default_factory=dict)
    _store: dict[str, list[_StoreFault]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def armed(self) -> bool:
        """True when the spec names at least one fault."""
        return bool(self._points or self._store)

    def arms(self, point: CrashPoint) -> bool:
        """Whether a trigger is set on crash point `point` (a caller may then skip work
        that exists only to make the point reachable)."""
        return bool(self._points.get(point))

    def hit(self, point: CrashPoint) -> None:
        """Pass crash point `point`; crash if an armed trigger fires."""
        triggers = self._points.get(point)
        if triggers is None and point not in _POINT_SET:
            raise ValueError(f"{point!r} is not a crash point")
        if not triggers:
            return
        with self._lock:
            fire = any([t.fires() for t in triggers])  # every trigger counts its pass
        if fire:
            self.crash(point)

    def store_fault(self, op: str) -> str | None:
        """The action to take on this pass of store operation `op` (None: none)."""
        faults = self._store.get(op)
        if not faults:
            return None
        with self._lock:
            fired = [f.action for f in faults if f.trigger.fires()]
        return fired[0] if fired else None


def parse_faults(
    spec: str | None, *, crash: Callable[[str], None] = kill_self, seed: int | None = None
) -> Faults:
    """Parse a fault SPEC (module docstring); FaultSpecError on anything malformed."""
    spec = (spec or "").strip()
    faults = Faults(spec=spec, crash=crash)
    items = [item.strip() for item in spec.split(",") if item.strip()] if spec else []
    pending: list[tuple[str, re.Match[str]]] = []
    for item in items:
        if item.startswith("seed="):
            try:
                faults.seed = int(item[5:])
            except ValueError:
                raise FaultSpecError(f"fault spec item {item!r}: seed must be an int") from None
            continue
        m = _ITEM.match(item)
        if m is None:
            raise FaultSpecError(
                f"fault spec item {item!r}: expected POINT@N, POINT@N+, POINT%P or "
                "store.OP=ACTION with one of those triggers"
            )
        pending.append((item, m))
    if seed is not None:
        faults.seed = seed
    for index, (item, m) in enumerate(pending):
        trigger = _make_trigger(item, m, faults.seed, index)
        if m["point"] is not None:
            if m["point"] not in _POINT_SET:
                raise FaultSpecError(
                    f"fault spec item {item!r}: unknown crash point; one of "
                    + ", ".join(CRASH_POINTS)
                )
            faults._points.setdefault(CrashPoint[m["point"]], []).append(trigger)
            continue
        op, action = m["op"], m["action"]
        if op not in STORE_OPS:
            raise FaultSpecError(f"fault spec item {item!r}: store op is one of {STORE_OPS}")
        if action not in STORE_ACTIONS:
            raise FaultSpecError(f"fault spec item {item!r}: action is one of {STORE_ACTIONS}")
        if action == "corrupt" and op != "read":
            raise FaultSpecError(f"fault spec item {item!r}: corrupt applies to store.read only")
        faults._store.setdefault(op, []).append(_StoreFault(action, trigger))
    return faults


def _make_trigger(item: str, m: re.Match[str], seed: int, index: int) -> _Trigger:
    if m["prob"] is not None:
        try:
            prob = float(m["prob"])
        except ValueError:
            raise FaultSpecError(f"fault spec item {item!r}: bad probability") from None
        if not 0.0 < prob <= 1.0:
            raise FaultSpecError(f"fault spec item {item!r}: probability must be in (0, 1]")
        # One generator per item, seeded by (seed, position): adding an item elsewhere in the
        # spec does not shift this one's draws.
        return _Trigger(prob=prob, rng=random.Random(f"{seed}:{index}:{item}"))
    nth = int(m["nth"])
    if nth < 1:
        raise FaultSpecError(f"fault spec item {item!r}: N counts from 1")
    return _Trigger(nth=nth, plus=m["plus"] is not None)


def store_oserror(action: str, what: str) -> OSError:
    """The OSError an injected ENOSPC or EIO raises."""
    code = _errno.ENOSPC if action == "ENOSPC" else _errno.EIO
    return OSError(code, f"{os.strerror(code)} (injected on {what})")


NO_FAULTS: Final = Faults()
