"""pager tests: each runs with structlog at info level (the `info_logs` fixture); hv's and
the pager's per-page debug lines would drown a failure's log."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _info_logs(info_logs: None) -> None:
    """Every pager test wants it: most run hv and a pager in-process."""
