"""One logging set-up for every process: JSON lines on stderr, console on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure_logging(
    proc: str,
    *,
    level: str = "info",
    json: bool | None = None,
    stream: TextIO | None = None,
    **context: object,
) -> None:
    """Configure structlog for process `proc` and bind `proc` (and `context`) for every line.

    `json=None` picks JSON when `stream` is not a terminal. Levels are names ("info").
    """
    out = stream if stream is not None else sys.stderr
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
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(proc=proc, **context)
