"""`python -m stack.bench`: the probes the memory section runs in fresh processes."""

from __future__ import annotations

import json
import sys

from .memory import probe_hv_memory, probe_pager_index
from .table import profile_summary


def main(argv: list[str]) -> int:
    """Run one probe; its answer on stdout (JSON or text), the exit status."""
    from transport import configure_logging

    configure_logging("bench-probe", level="error")  # stdout carries the JSON answer
    if len(argv) == 2 and argv[0] == "probe-hv-memory":
        print(json.dumps(probe_hv_memory(int(argv[1]))))
        return 0
    if len(argv) == 2 and argv[0] == "probe-pager-index":
        print(json.dumps(probe_pager_index(argv[1])))
        return 0
    if len(argv) >= 2 and argv[0] == "profile-summary" and not argv[1].startswith("-"):
        for path in argv[1:]:
            try:
                print(profile_summary(path))
            except (OSError, ValueError, ZeroDivisionError) as exc:
                print(
                    f"python -m stack.bench: error: {path}: not a py-spy raw profile ({exc})",
                    file=sys.stderr,
                )
                return 1
        return 0
    print(
        "usage: python -m stack.bench probe-hv-memory N | probe-pager-index DIR"
        " | profile-summary FILE...",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
