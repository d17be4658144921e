"""Shared test configuration: every I/O test also carries its own trio.fail_after."""

from __future__ import annotations

import os

import pytest
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
