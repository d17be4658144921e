"""The seeded fault plan: which fault kinds a seed switches on, and when each fault fires.

BUGGIFY-style (SIM.md "Faults"): per seed, each kind is switched on with probability
`KIND_ON`, then fires at its own rate, drawn per seed from `RATES`. Switching kinds on per
seed finds bugs that need one kind to be frequent and the others quiet. A plan is data:
it serialises to JSON (`to_json`/`plan_from_json`), and `plan_from_json` also reads what
`xpemu stress --schedule-only` prints and what `xpemu stress --report` records, so a
real-process schedule replays here.

Scheduled kinds (each an instant of simulated time, seconds from the workload's start):

- `kill`: the pager dies at that instant (whatever it is doing);
- `crash`: the next pager is armed with crash point `point`, dying the `nth` time it passes;
- `power`: the machine loses power: the pager dies and the disk loses its unsynced changes
  (`mode` drop, or subset: some kept, one torn); with `point` and `nth`, the next pager
  is armed and the power goes when it passes that crash point (mid-batch, say);
- `disk`: the disk misbehaves for `for_s` seconds: `fault` (eio_read, eio_write, eio_sync,
  enospc, latent, misdirect, slow_sync) at per-operation `rate`;
- `store`: a fault of the pager's own store-fault grammar, as `xpemu stress` arms it;
- `cut`: the pager's connection breaks inside the next frame going `direction`;
- `target`: the domain's target moves to `tot_pages`;
- `foreign`: a mapper maps `count` gfns (holding them) for `for_s` seconds;
- `enomem`: a second domain takes every free host frame for `for_s` seconds.

Settings switched per seed (`TOGGLES`): `balloon` (the guest balloons out and in),
`race` (the vCPUs crowd onto a few hot gfns), `ring_full` (a ring of 2 slots),
`slow_drops` (the pager waits before serving DROP_PAGE requests: `PagerConfig.drop_delay`,
a BUGGIFY knob that lets a drop go stale before it is served).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pager.faults import CRASH_POINTS

#: Kinds that are scheduled as instants.
KINDS: Final = (
    "kill",
    "crash",
    "power",
    "disk",
    "store",
    "cut",
    "target",
    "foreign",
    "enomem",
)

#: World settings switched on per seed.
TOGGLES: Final = ("balloon", "race", "ring_full", "slow_drops")

#: Toggles drawn from the plan's own stream, before its faults; a toggle added later draws
#: from a stream of its own, so that adding it leaves every seed's faults as they were.
_FIRST_TOGGLES: Final = ("balloon", "race", "ring_full")

#: Probability that a seed switches a kind (or a toggle) on.
KIND_ON: Final = 0.5

#: Mean faults per fault window of a switched-on kind (its rate): one of these per seed.
RATES: Final = (1.0, 3.0, 8.0)

#: Disk faults a `disk` window can carry, and the per-operation rate range of each.
DISK_FAULTS: Final = (
    "eio_read",
    "eio_write",
    "eio_sync",
    "enospc",
    "latent",
    "misdirect",
    "slow_sync",
)

#: Store faults of `pager.faults`' grammar the `store` kind draws from (as stress does).
STORE_FAULTS: Final = (
    ("write", "ENOSPC"),
    ("write", "EIO"),
    ("fsync", "EIO"),
    ("commit", "EIO"),
    ("read", "EIO"),
    ("read", "corrupt"),
)

#: The format tag of a plan written by the sim.
FORMAT: Final = "xpemu-sim-plan/1"

#: stress's cut directions, in the sim's words.
_STRESS_CUT = {"to_hv": "to_server", "to_pager": "to_client"}


class PlanError(ValueError):
    """A plan (or a schedule file) that cannot be run; the message says why."""


@dataclass(frozen=True, slots=True)
class SimFault:
    """One fault: when (simulated seconds from the workload's start), what, and how."""

    at: float
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (as `xpemu stress` writes its faults)."""
        return {"at": self.at, "kind": self.kind, **dict(self.params)}

    def describe(self) -> str:
        """One short line."""
        params = " ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"t={self.at:.4f}s {self.kind} {params}".rstrip()


@dataclass(frozen=True, slots=True)
class Plan:
    """What one run does wrong: the settings switched on and the scheduled faults."""

    toggles: frozenset[str] = frozenset()
    faults: tuple[SimFault, ...] = ()

    def with_faults(self, faults: Sequence[SimFault]) -> Plan:
        """The same plan with another fault list (for shrinking)."""
        return Plan(self.toggles, tuple(faults))

    def to_dict(self, seed: int | None = None, scenario: str | None = None) -> dict[str, Any]:
        """JSON-able form."""
        out: dict[str, Any] = {"format": FORMAT}
        if seed is not None:
            out["seed"] = seed
        if scenario is not None:
            out["scenario"] = scenario
        out["toggles"] = sorted(self.toggles)
        out["faults"] = [f.to_dict() for f in self.faults]
        return out

    def to_json(self, seed: int | None = None, scenario: str | None = None) -> str:
        """The plan as one JSON document."""
        return json.dumps(self.to_dict(seed, scenario), sort_keys=True)

    def counts(self) -> dict[str, int]:
        """Faults per kind."""
        out: dict[str, int] = {}
        for f in self.faults:
            out[f.kind] = out.get(f.kind, 0) + 1
        return out


def make_plan(
    seed: int, window: float, *, nr_gfns: int, base: Mapping[str, int] | None = None
) -> Plan:
    """The plan of `seed` over a fault window of `window` simulated seconds.

    `base`: kinds that fire at least this many times whatever the draw (a scenario's
    floor, e.g. its pager crashes and power losses).
    """
    rng = random.Random(f"xpemu-sim-plan/{seed}")
    toggles = {t for t in _FIRST_TOGGLES if rng.random() < KIND_ON}
    later = random.Random(f"xpemu-sim-plan/{seed}/toggles")
    toggles.update(t for t in TOGGLES if t not in _FIRST_TOGGLES and later.random() < KIND_ON)
    faults: list[SimFault] = []
    for kind in KINDS:
        n = 0
        if rng.random() < KIND_ON:
            n = _poisson(rng, rng.choice(RATES))
        n = max(n, (base or {}).get(kind, 0))
        for _ in range(n):
            at = round(rng.uniform(0.0, window), 6)
            faults.append(SimFault(at, kind, _params(kind, rng, window, nr_gfns)))
    faults.sort(key=lambda f: (f.at, f.kind))
    return Plan(frozenset(toggles), tuple(faults))


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's method split into steps, fine for the small means here)."""
    n, left = 0, mean
    while left > 0:
        step = min(left, 20.0)
        left -= step
        limit, p = pow(2.718281828459045, -step), 1.0
        while True:
            p *= rng.random()
            if p <= limit:
                break
            n += 1
    return n


def _params(kind: str, rng: random.Random, window: float, nr_gfns: int) -> dict[str, Any]:
    if kind == "crash":
        return {"point": rng.choice(CRASH_POINTS), "nth": rng.choice((1, 1, 2, 3))}
    if kind == "power":
        power: dict[str, Any] = {"mode": rng.choice(("drop", "subset"))}
        if rng.random() < 0.5:  # at a crash point: mid-batch, with writes not yet synced
            power.update(point=rng.choice(CRASH_POINTS), nth=rng.choice((1, 1, 2, 3)))
        return power
    if kind == "disk":
        return {
            "fault": rng.choice(DISK_FAULTS),
            "rate": round(rng.choice((0.02, 0.1, 0.3)), 3),
            "for_s": round(window * rng.uniform(0.02, 0.2), 6),
        }
    if kind == "store":
        op, action = rng.choice(STORE_FAULTS)
        return {"op": op, "action": action, "nth": rng.randint(1, 4)}
    if kind == "cut":
        return {
            "direction": rng.choice(("to_server", "to_client")),
            "fraction": round(rng.random() * 0.99, 3),
        }
    if kind == "target":
        return {"tot_pages": rng.randint(nr_gfns // 8, nr_gfns)}
    if kind == "foreign":
        return {"count": rng.randint(1, 8), "for_s": round(window * rng.uniform(0.01, 0.1), 6)}
    if kind == "enomem":
        return {"for_s": round(window * rng.uniform(0.01, 0.1), 6)}
    return {}


# ---------------------------------------------------------------------- reading plans


def plan_from_json(text: str, *, window: float) -> tuple[Plan, dict[str, Any]]:
    """A plan from the sim's JSON or from `xpemu stress` (`--schedule-only` output or a
    `--report` file); also returns the document's other fields (seed, scenario).

    A stress schedule's times are real seconds of a longer run: they are scaled into this
    run's `window`, keeping their order and spacing. PlanError on anything unusable.
    """
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise PlanError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PlanError("a plan is a JSON object")
    meta = {k: doc[k] for k in ("seed", "scenario") if k in doc}
    if doc.get("format") == FORMAT:
        toggles = doc.get("toggles", [])
        if not isinstance(toggles, list) or any(t not in TOGGLES for t in toggles):
            raise PlanError(f"toggles must be a list of {', '.join(TOGGLES)}")
        faults = [_fault(d, scale=1.0) for d in _list(doc.get("faults", []))]
        return Plan(frozenset(toggles), tuple(sorted(faults, key=lambda f: f.at))), meta
    if "schedule" in doc:
        items = _list(doc["schedule"])
        end = max((float(d.get("at", 0)) for d in items if isinstance(d, dict)), default=0.0)
        scale = window / (end * 1.05) if end > window else 1.0
        faults = [_fault(_from_stress(d), scale=scale) for d in items]
        meta["from"] = "xpemu stress"
        return Plan(frozenset(), tuple(sorted(faults, key=lambda f: f.at))), meta
    raise PlanError(f"neither a sim plan ({FORMAT}) nor an xpemu stress schedule")


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise PlanError("the faults must be a JSON list")
    return value


def _from_stress(d: Any) -> Any:
    if isinstance(d, dict) and d.get("kind") == "cut" and d.get("direction") in _STRESS_CUT:
        return {**d, "direction": _STRESS_CUT[d["direction"]]}
    return d


def _fault(d: Any, *, scale: float) -> SimFault:
    if not isinstance(d, dict):
        raise PlanError(f"a fault must be an object, not {d!r}")
    kind = d.get("kind")
    if kind not in KINDS:
        raise PlanError(f"unknown fault kind {kind!r} (known: {', '.join(KINDS)})")
    try:
        at = float(d["at"]) * scale
    except (KeyError, TypeError, ValueError):
        raise PlanError(f"fault {d!r} has no valid 'at'") from None
    if at < 0:
        raise PlanError(f"fault {d!r} is at a negative time")
    params = {k: v for k, v in d.items() if k not in ("at", "kind")}
    _validate(kind, params)
    return SimFault(round(at, 6), kind, params)


_REQUIRED: Final = {
    "crash": ("point", "nth"),
    "power": (),
    "disk": ("fault", "rate", "for_s"),
    "store": ("op", "action", "nth"),
    "cut": ("direction", "fraction"),
    "target": ("tot_pages",),
    "foreign": ("count", "for_s"),
    "enomem": ("for_s",),
}


def _validate(kind: str, params: Mapping[str, Any]) -> None:
    missing = [k for k in _REQUIRED.get(kind, ()) if k not in params]
    if missing:
        raise PlanError(f"a {kind} fault needs {', '.join(missing)}")
    if kind == "crash" and params["point"] not in CRASH_POINTS:
        raise PlanError(f"unknown crash point {params['point']!r}")
    if kind == "disk" and params["fault"] not in DISK_FAULTS:
        raise PlanError(f"unknown disk fault {params['fault']!r}")
    if kind == "store" and (params["op"], params["action"]) not in STORE_FAULTS:
        raise PlanError(f"unknown store fault {params['op']}={params['action']}")
    if kind == "cut" and params["direction"] not in ("to_server", "to_client"):
        raise PlanError(f"unknown cut direction {params['direction']!r}")
    if kind == "power" and params.get("mode", "drop") not in ("drop", "subset"):
        raise PlanError(f"unknown power-loss mode {params['mode']!r}")
    if kind == "power" and "point" in params:
        if params["point"] not in CRASH_POINTS or "nth" not in params:
            raise PlanError(f"a power loss at a crash point needs a known point and nth: {params}")


__all__ = [
    "DISK_FAULTS",
    "FORMAT",
    "KINDS",
    "TOGGLES",
    "Plan",
    "PlanError",
    "SimFault",
    "make_plan",
    "plan_from_json",
]
