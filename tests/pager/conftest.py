"""pager tests: structlog at info level (hv's per-page debug lines drown a failure's log)."""

from __future__ import annotations

import logging

import structlog

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
