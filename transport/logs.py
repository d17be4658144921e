"""Logging for every process: JSON lines on stderr (console on a terminal), files capped.

Log files stay bounded: `CappedLog` renames a file that reached its cap to `<file>.1`
(dropping the previous `.1`) and starts a new one, so a process never has more than about
twice the cap on disk, however long it runs. `xpemu` starts each child with its stderr on
`<name>.log` and the environment variables `XPEMU_LOG_FILE` (that path) and
`XPEMU_LOG_MAX_BYTES` (the cap); `configure_logging` then rotates the child's own stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from types import TracebackType
from typing import TextIO, cast

import structlog

#: Environment variables by which `xpemu` asks a child to cap its stderr log file.
ENV_LOG_FILE = "XPEMU_LOG_FILE"
ENV_LOG_MAX_BYTES = "XPEMU_LOG_MAX_BYTES"


class CappedLog:
    """A text stream to the log file `path` that rotates once it holds `max_bytes` or more
    (counted in characters; log lines are ASCII JSON). Checked after each line, so a file
    ends at most one line past the cap.

    With `as_stderr`, the file is this process's stderr (fd 2, which must already be that
    file): after a rotation the new file is put on fd 2, so whatever else goes to stderr
    (a traceback, a one-line error) follows. Otherwise the file is opened for appending.
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int, *, as_stderr: bool = False):
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self.as_stderr = as_stderr
        self.rotations = 0
        if as_stderr:
            fd2, named = os.fstat(2), os.stat(self.path)
            if (fd2.st_dev, fd2.st_ino) != (named.st_dev, named.st_ino):
                raise ValueError(f"stderr is not {self.path}")
            self._stream: TextIO = sys.stderr
        else:
            self._stream = open(self.path, "a", encoding="utf-8")
        self._size = os.fstat(self._stream.fileno()).st_size

    def write(self, text: str) -> int:
        """Write `text` (rotation happens in `flush`, after a whole line)."""
        self._size += len(text)
        return self._stream.write(text)

    def flush(self) -> None:
        """Flush; rotate if the file has reached its cap."""
        self._stream.flush()
        if self._size >= self.max_bytes:
            self._rotate()

    def isatty(self) -> bool:
        """A log file is never a terminal."""
        return False

    def _rotate(self) -> None:
        os.replace(self.path, self.path + ".1")
        if self.as_stderr:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(fd, 2)
            os.close(fd)
        else:
            self._stream.close()
            self._stream = open(self.path, "a", encoding="utf-8")
        self._size = 0
        self.rotations += 1

    def close(self) -> None:
        """Close the file (stderr is left open)."""
        if not self.as_stderr:
            self._stream.close()

    def __enter__(self) -> CappedLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _capped_stderr() -> CappedLog | None:
    """stderr as a CappedLog when `xpemu` asked for one and stderr is that file."""
    path, cap = os.environ.get(ENV_LOG_FILE), os.environ.get(ENV_LOG_MAX_BYTES)
    if not path or not cap:
        return None
    try:
        return CappedLog(path, int(cap), as_stderr=True)
    except (OSError, ValueError):
        return None  # not the file it should be: leave stderr alone


def configure_logging(
    proc: str,
    *,
    level: str = "info",
    json: bool | None = None,
    stream: TextIO | CappedLog | None = None,
    **context: object,
) -> None:
    """Configure structlog for process `proc` and bind `proc` (and `context`) for every line.

    `json=None` picks JSON when `stream` is not a terminal. Levels are names ("info").
    Without `stream`, stderr; capped and rotated when `xpemu` asked for it (see above).
    """
    out: TextIO | CappedLog = stream if stream is not None else (_capped_stderr() or sys.stderr)
    if json is None:
        json = not out.isatty()
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:
        processors += [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=False)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # A CappedLog has what the logger uses of a TextIO: write, flush.
        logger_factory=structlog.WriteLoggerFactory(file=cast(TextIO, out)),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(proc=proc, **context)
