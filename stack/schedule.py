"""The seeded fault schedule of `xpemu stress`: decided up front, from the seed alone.

A schedule is a list of `Fault(at, kind, params)`, times in seconds from the start of the
workload. The same (seed, duration, count, kinds) always gives the same list, so a failing
run can be replayed; the report prints it. What each kind does:

- `kill`: SIGKILL the pager at that instant (whatever it is doing: recovery included);
- `crash`: restart the pager armed with one crash point (`XPEMU_FAULTS=POINT@N`): it
  SIGKILLs itself the N-th time it passes that point. The restart that arms it is itself
  a SIGKILL at a random instant;
- `cut`: the fault proxy between the pager and `privcmd.sock` cuts the byte stream in the
  middle of the next frame going one way (`to_hv` or `to_pager`);
- `store`: restart the pager with a failing store: from the N-th write, fsync or commit on,
  ENOSPC or EIO (`store.OP=ACTION@N+`, lasting until the next fault ends that pager), or
  the N-th read failing with EIO or returning a flipped byte (`store.read=ACTION@N`, a
  transient fault the pager must retry through);
- `power` (stack/power.py, needs FUSE; not a default kind): the pager and the lazy file
  system under its state directory lose power together: every unsynced write is lost or,
  when `harsh`, a seeded subset survives with one write torn; then a remount and a new pager;
- `lie` (stack/power.py, needs FUSE; not a default kind): for `for` seconds, or until the
  next power cut, every sync answers success and makes nothing durable.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pager.faults import CRASH_POINTS

#: Fault kinds and their default weights in a schedule.
DEFAULT_KINDS: Final = {"kill": 4, "crash": 4, "cut": 2, "store": 2}

#: Every kind `--kinds` accepts: the defaults, and those that need FUSE (stack/power.py).
ALL_KINDS: Final = (*DEFAULT_KINDS, "power", "lie")


#: Store faults (op, action) the schedule draws from (pager/faults.py grammar).
STORE_FAULTS: Final = (
    ("write", "ENOSPC"),
    ("write", "EIO"),
    ("fsync", "EIO"),
    ("commit", "EIO"),
    ("read", "EIO"),
    ("read", "corrupt"),
)

#: Directions the proxy can cut.
CUT_DIRECTIONS: Final = ("to_hv", "to_pager")


@dataclass(frozen=True, slots=True)
class Fault:
    """One scheduled fault: when (seconds from the start), what, and how."""

    at: float
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> str | None:
        """The pager's XPEMU_FAULTS spec this fault arms (None: not a pager-side fault)."""
        p = self.params
        if self.kind == "crash":
            return f"{p['point']}@{p['nth']}"
        if self.kind == "store":
            # Write-side faults persist (the disk stays full or failing: page-out must stop
            # without losing anything); read-side faults are transient (one failed or
            # corrupted read, which the pager retries). A read that fails for ever is a
            # real loss the pager can only report (EIO to the guest), not survive.
            persist = "" if p["op"] == "read" else "+"
            return f"store.{p['op']}={p['action']}@{p['nth']}{persist}"
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"at": self.at, "kind": self.kind, **dict(self.params)}

    def describe(self) -> str:
        """One short line."""
        if self.kind == "cut":
            what = f"cut {self.params['direction']} at {self.params['fraction']:.2f} of a frame"
        elif self.kind == "power":
            what = "power " + ("harsh" if self.params["harsh"] else "(all unsynced lost)")
        elif self.kind == "lie":
            what = f"lie for {self.params['for']:g} s"
        elif self.spec is not None:
            what = f"{self.kind} {self.spec}"
        else:
            what = self.kind
        return f"t={self.at:6.2f}s  {what}"


def make_schedule(
    seed: int,
    duration: float,
    *,
    count: int,
    kinds: Mapping[str, int] | None = None,
    start: float = 1.0,
    tail: float = 2.0,
) -> list[Fault]:
    """`count` faults spread over [start, duration - tail], drawn from `seed` alone.

    Each fault falls at a random point of its own equal share of the window, so faults
    never bunch up (the pager gets time to come back) yet the instants stay random.
    """
    weights = dict(DEFAULT_KINDS if kinds is None else kinds)
    unknown = set(weights) - set(ALL_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    names = [k for k, w in weights.items() if w > 0]
    if count < 0:
        raise ValueError("fault count must be >= 0")
    if count and not names:
        raise ValueError("no fault kind has a positive weight")
    end = duration - tail
    if count and end <= start:
        raise ValueError(
            f"duration {duration:g} s leaves no room for faults (need > {start + tail:g} s)"
        )
    rng = random.Random(f"xpemu-stress/{seed}")
    share = (end - start) / count if count else 0.0
    faults = []
    for i in range(count):
        at = round(start + (i + rng.uniform(0.1, 0.9)) * share, 3)
        kind = rng.choices(names, weights=[weights[n] for n in names])[0]
        faults.append(Fault(at, kind, _params(kind, rng)))
    return faults


def _params(kind: str, rng: random.Random) -> dict[str, Any]:
    if kind == "crash":
        return {"point": rng.choice(CRASH_POINTS), "nth": rng.randint(1, 3)}
    if kind == "store":
        op, action = rng.choice(STORE_FAULTS)
        return {"op": op, "action": action, "nth": rng.randint(1, 4)}
    if kind == "cut":
        return {"direction": rng.choice(CUT_DIRECTIONS), "fraction": round(rng.random(), 3)}
    if kind == "power":
        return {"harsh": rng.random() < 0.5, "seed": rng.randrange(2**32)}
    if kind == "lie":
        return {"for": round(rng.uniform(3.0, 8.0), 2)}
    return {}


def parse_kinds(text: str) -> dict[str, int]:
    """`kill=4,crash=4,cut=2,store=2` (or `kill,crash`: weight 1 each) -> weights."""
    out: dict[str, int] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, weight = item.partition("=")
        if name not in ALL_KINDS:
            raise ValueError(f"unknown fault kind {name!r} (choose from {', '.join(ALL_KINDS)})")
        try:
            out[name] = int(weight) if weight else 1
        except ValueError:
            raise ValueError(f"fault kind weight {weight!r} is not an int") from None
        if out[name] < 0:
            raise ValueError("fault kind weights must be >= 0")
    if not out:
        raise ValueError("no fault kinds given")
    return out


def schedule_to_list(schedule: Sequence[Fault]) -> list[dict[str, Any]]:
    """The schedule as JSON-able data."""
    return [f.to_dict() for f in schedule]
