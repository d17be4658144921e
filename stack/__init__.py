"""The `xpemu` command: run hv, pager and guest as processes (`up`), stress them with a
seeded fault schedule (`stress`), and inspect a running hv (`status`)."""

from .errors import StackError
from .harness import run_stack
from .options import StackOptions
from .proxy import FaultProxy, FrameTracker
from .report import summary_text
from .schedule import Fault, make_schedule, parse_kinds

__all__ = [
    "Fault",
    "FaultProxy",
    "FrameTracker",
    "StackError",
    "StackOptions",
    "make_schedule",
    "parse_kinds",
    "run_stack",
    "summary_text",
]
