"""pager: a xenpaging that survives its own crash.

A user-space pager for the emulated hypervisor (`hv`), speaking PROTOCOL.md over any trio
stream, with a durable paging store (a self-describing pages file: 4 KiB slots under
checksummed header records, one sync per page-out batch) in a state directory,
batched page-out and page-in pipelines, three replacement policies (`xenpaging`, `clock`, `car`),
recovery from nothing but the state directory, named crash points and disk faults.

Public API:

- `open_store(disk, *, faults, lock_timeout)`: lock and open the store on a `Disk` (a
  state directory's `RealDisk`, or the simulator's disk); PagerError if it cannot be.
- `run_pager(stream, store, config, *, faults, stop, task_status)`: run one pager over
  an open stream to hv's privcmd socket with an open store, owning both from then on (see
  its docstring); returns `PagerStats`.
- `PagerConfig`: the tunables (`domid`, `policy`, `on_exit`, `batch`, `concurrency`,
  `target`, `prefetch`, timeouts).
- `connect_privcmd(run_dir, timeout)`: wait (bounded, with backoff) for
  ``run_dir/privcmd.sock`` and connect to it.
- `parse_faults(spec, crash=...)` / `Faults`, `SimulatedCrash`, `raise_simulated_crash`,
  `CrashPoint` (and `CRASH_POINTS`, its names): fault injection (grammar in `pager.faults`).
- `PageStore`, `Row`, `checksum`, `RealDisk`: the store and the production `Disk`, for
  tests and tools.
- `XenpagingPolicy`, `ClockPolicy`, `CarPolicy`, `make_policy`: replacement policies
  (`Clock2QPolicy` and plug-in loading in `pager.policy`).

``python -m pager --run-dir DIR --state-dir DIR [--domid D]
[--policy xenpaging|clock|car|clock2q|MOD:CLASS] [--on-exit pagein|keep] [--faults SPEC]
[--batch N] [--concurrency N] [--target T]
[--prefetch N] [...]`` runs it as a process (``--help``; exit 75 means hv
went away: restart it, it recovers from the state directory); ``xpemu bench`` and
``python -m stack.bench.inproc`` measure it.

Connection loss is not retried in-process: the pager exits (75) and the stack restarts it,
which exercises the same recovery path as a crash.
"""

from .commit import open_store
from .config import ConnectionLost, PagerConfig, PagerError, PagerStats
from .core import Pager, run_pager
from .faults import (
    CRASH_POINTS,
    ENV_VAR,
    CrashPoint,
    Faults,
    FaultSpecError,
    SimulatedCrash,
    kill_self,
    parse_faults,
    raise_simulated_crash,
)
from .net import connect_privcmd
from .policy import POLICIES, CarPolicy, ClockPolicy, XenpagingPolicy, make_policy
from .realdisk import RealDisk
from .rowindex import Row
from .store import ChecksumError, PageStore, StoreError, StoreLocked, checksum

__all__ = [
    "CRASH_POINTS",
    "ENV_VAR",
    "POLICIES",
    "CarPolicy",
    "ChecksumError",
    "ClockPolicy",
    "ConnectionLost",
    "CrashPoint",
    "FaultSpecError",
    "Faults",
    "PageStore",
    "Pager",
    "PagerConfig",
    "PagerError",
    "PagerStats",
    "RealDisk",
    "Row",
    "SimulatedCrash",
    "StoreError",
    "StoreLocked",
    "XenpagingPolicy",
    "checksum",
    "connect_privcmd",
    "kill_self",
    "make_policy",
    "open_store",
    "parse_faults",
    "raise_simulated_crash",
    "run_pager",
]
