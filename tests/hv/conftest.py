"""Fixtures for hv tests (helpers live in hv_helpers)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from hv_helpers import Harness

from hv import HvConfig, Hypervisor


@pytest.fixture(autouse=True)
def _info_logs(info_logs: None) -> None:
    """structlog at info level for every hv test: hv's per-page debug lines would drown a
    failure's log (until now they ran so because tests/pager/conftest.py configured it for
    the whole session at import)."""


@pytest.fixture
def config() -> HvConfig:
    """A small domain 1: 64 gfns, 4 vCPUs, 8 ring slots (tests override as needed)."""
    return HvConfig(nr_gfns=64, vcpus=4, ring_size=8)


@pytest.fixture
async def harness(config: HvConfig) -> AsyncIterator[Harness]:
    """An hv serving in-memory connections; its invariants are checked at the end."""
    hv = Hypervisor(config)
    async with trio.open_nursery() as nursery:
        yield Harness(hv, nursery)
        nursery.cancel_scope.cancel()
    assert hv.check() == [], "invariants after the test"
    hv.close()
