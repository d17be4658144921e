"""sim: the deterministic simulation of SIM.md, World 2 (one process, one seed).

- `SimDisk`: `pager.disk`'s `Disk` in memory, with power loss and sector faults;
- `Link`: in-memory connections with latency in trio time, cut mid-frame;
- `make_plan` / `plan_from_json` / `Plan`: the seeded BUGGIFY fault plan and its JSON
  (including `xpemu stress`'s schedules);
- `run_seed`: one whole run of hv, pager and guest under `SimClock` (MockClock's autojump,
  cheaper), its checks and trace;
- `run_seeds`: many seeds, in worker processes; `shrink`: delta debugging of a plan.
"""

from .disk import NO_DISK_FAULTS, POWER_MODES, DiskFaults, SimDisk, SimFile, SimLock
from .net import Link, SimStream
from .plan import KINDS, TOGGLES, Plan, PlanError, SimFault, make_plan, plan_from_json
from .runs import Summary, run_seeds
from .scenario import SCENARIOS, Scenario, SimResult
from .shrink import ShrinkResult, ddmin, shrink
from .trace import Trace
from .world import run_seed

__all__ = [
    "KINDS",
    "NO_DISK_FAULTS",
    "POWER_MODES",
    "SCENARIOS",
    "TOGGLES",
    "DiskFaults",
    "Link",
    "Plan",
    "PlanError",
    "Scenario",
    "ShrinkResult",
    "SimDisk",
    "SimFault",
    "SimFile",
    "SimLock",
    "SimResult",
    "SimStream",
    "Summary",
    "Trace",
    "ddmin",
    "make_plan",
    "plan_from_json",
    "run_seed",
    "run_seeds",
    "shrink",
]
