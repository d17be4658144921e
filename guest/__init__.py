"""The guest workload: vCPUs that read and write memory through hv and verify every byte.

Run it as `python -m guest --run-dir DIR`; its core, `run_workload`, runs over any
connected `transport.Client`, so tests wire it to an in-process hv over memory streams.
"""

from .access import diagnose
from .config import GuestConfig
from .content import ZERO_PAGE, page_bytes
from .patterns import PATTERNS, ZipfTable, make_pattern
from .report import GuestReport
from .shadow import GfnState, Shadow
from .stats import Latencies
from .workload import run_workload, verify_all

__all__ = [
    "PATTERNS",
    "ZERO_PAGE",
    "GfnState",
    "GuestConfig",
    "GuestReport",
    "Latencies",
    "Shadow",
    "ZipfTable",
    "diagnose",
    "make_pattern",
    "page_bytes",
    "run_workload",
    "verify_all",
]
