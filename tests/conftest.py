"""Shared test configuration: every I/O test also carries its own trio.fail_after.

Logging is configured per test, by fixture (`info_logs`, `structlog_restored`), and put
back after it: no conftest configures it at import for the whole session.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.register_profile("ci", parent=settings.get_profile("default"), max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The compose test last; long stress runs only when asked for (XPEMU_SLOW=1, -m slow).

    The compose test goes last because tearing its images and volumes down keeps the disk
    busy for a while after it ends, and the timing of the tests after it would suffer.
    """
    items.sort(key=lambda item: "compose" in item.keywords)  # stable: the order is kept
    if os.environ.get("XPEMU_SLOW") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: set XPEMU_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def structlog_restored() -> Iterator[None]:
    """Whatever the test does to structlog's configuration and bound context is undone."""
    saved = structlog.get_config()
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)
    structlog.contextvars.clear_contextvars()


@pytest.fixture
def info_logs(structlog_restored: None) -> None:
    """structlog at info level for this test: the per-page debug lines of an in-process hv
    and pager would drown the log pytest shows of a failure."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
