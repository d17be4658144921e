"""The logging fixtures of tests/conftest.py: info level for the test that asks, and only it."""

from __future__ import annotations

import logging

import pytest
import structlog


def test_info_logs_drops_debug_lines(info_logs: None, capsys: pytest.CaptureFixture[str]) -> None:
    log = structlog.get_logger("t")
    log.debug("page.debug_line", gfn=1)
    log.info("page.info_line", gfn=2)
    out = capsys.readouterr().out
    assert "page.info_line" in out and "page.debug_line" not in out


def test_structlog_restored_undoes_a_configure(structlog_restored: None) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    structlog.contextvars.bind_contextvars(proc="leak")
    # The next test (below, same module) sees neither.


def test_nothing_leaked_from_the_test_before(capsys: pytest.CaptureFixture[str]) -> None:
    assert structlog.contextvars.get_contextvars() == {}
    structlog.get_logger("t").info("page.after")
    assert "page.after" in capsys.readouterr().out  # not filtered at ERROR any more
