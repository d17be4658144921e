"""The trace of a run: every event in order (simulated time, component, event), and its hash.

Events come from the sim itself (faults, pager lives, checks) and from the components'
own structlog lines (info and above), captured while the run lasts: `capture_logs` points
structlog at the trace instead of a stream. A line is JSON with sorted keys, so two runs
of one seed give the same bytes, and the hash of the lines is the run's fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import IO, Any

import structlog
import trio


class Trace:
    """The events of one run, as JSON lines, hashed as they come."""

    def __init__(self, *, keep: bool = True) -> None:
        self.keep = keep
        self.lines: list[str] = []
        self.count = 0
        self._hash = hashlib.blake2b(digest_size=16)

    def add(self, component: str, event: str, **fields: Any) -> None:
        """Record one event at the current simulated time."""
        try:
            now = trio.current_time()
        except RuntimeError:  # outside the run (set-up, final checks)
            now = -1.0
        fields = {k: v for k, v in fields.items() if k not in ("timestamp", "level")}
        line = json.dumps(
            {"t": round(now, 9), "c": component, "e": event, **fields},
            sort_keys=True,
            default=_default,
        )
        self._hash.update(line.encode() + b"\n")
        self.count += 1
        if self.keep:
            self.lines.append(line)

    def hexdigest(self) -> str:
        """The hash of every line so far."""
        return self._hash.hexdigest()

    def write(self, out: IO[str]) -> None:
        """Every line, in order."""
        for line in self.lines:
            out.write(line + "\n")


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"bytes": len(value)}
    if isinstance(value, BaseException):
        return repr(value)
    return str(value)


@contextmanager
def capture_logs(trace: Trace, level: str = "info") -> Iterator[None]:
    """Send structlog lines (at `level` and above) to `trace` while the block runs."""

    def to_trace(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
        component = str(event_dict.pop("proc", "sim"))
        event = str(event_dict.pop("event", ""))
        event_dict.pop("exc_info", None)
        trace.add(component, event, **event_dict)
        raise structlog.DropEvent

    old = structlog.get_config()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, to_trace],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        structlog.configure(**old)


async def as_proc(proc: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run `fn` with structlog's `proc` bound (this task's context only)."""
    structlog.contextvars.bind_contextvars(proc=proc)
    return await fn(*args, **kwargs)


__all__ = ["Trace", "as_proc", "capture_logs"]
