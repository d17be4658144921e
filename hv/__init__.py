"""hv: the emulated hypervisor's paging path (p2m table, frames, mem_event ring, vCPUs).

`Hypervisor(HvConfig(...))` holds the host frame pool and the domains;
`Hypervisor.serve_stream(stream, socket)` serves one connection over any trio stream;
`serve(hv, run_dir)` listens on `privcmd.sock` and `guest.sock`. The p2m transition rules
are the table in `hv.rules`. `python -m hv` runs it as a process (PROTOCOL.md §10).
"""

from .config import HvConfig, default_host_frames
from .domain import Domain
from .domain_guest import GuestFault
from .frames import NO_FRAME, FramePool
from .hypervisor import Hypervisor
from .rules import TABLE, Rule, lookup
from .server import SOCKETS, serve

__all__ = [
    "NO_FRAME",
    "SOCKETS",
    "TABLE",
    "Domain",
    "FramePool",
    "GuestFault",
    "HvConfig",
    "Hypervisor",
    "Rule",
    "default_host_frames",
    "lookup",
    "serve",
]
