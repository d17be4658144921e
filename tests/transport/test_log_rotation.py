"""Log files stay bounded: a CappedLog rotates at its cap, a child's stderr rotates with
its structlog lines, and without the cap (the planted bug) the same output grows past it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from transport.logs import ENV_LOG_FILE, ENV_LOG_MAX_BYTES, CappedLog

LINE = "x" * 99 + "\n"  # 100 characters


def test_capped_log_rotates_and_keeps_one_old_file(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    with CappedLog(path, 1000) as log:
        for i in range(95):
            log.write(f"{i:04d}" + LINE[4:])
            log.flush()
    assert log.rotations == 9
    assert path.stat().st_size <= 1000 and (tmp_path / "a.log.1").stat().st_size <= 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.log", "a.log.1"]
    # Nothing lost across the last rotation: .1 then the current file, in order.
    lines = ((tmp_path / "a.log.1").read_text() + path.read_text()).splitlines()
    assert [int(ln[:4]) for ln in lines] == list(range(80, 95))
    with pytest.raises(ValueError):
        CappedLog(path, 0)


def test_an_existing_file_counts_toward_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_text(LINE * 9)
    with CappedLog(path, 1000) as log:
        log.write(LINE)
        log.flush()
        assert log.rotations == 1 and path.read_text() == ""


_CHILD = """
import sys, structlog
from transport import configure_logging
configure_logging("child")
log = structlog.get_logger()
for i in range(200):
    log.info("child.line", i=i, pad="y" * 60)
print("child: error: the last words", file=sys.stderr)
"""


def _run_child(tmp_path: Path, cap: int | None) -> Path:
    path = tmp_path / "child.log"
    env = {k: v for k, v in os.environ.items() if k not in (ENV_LOG_FILE, ENV_LOG_MAX_BYTES)}
    if cap is not None:
        env |= {ENV_LOG_FILE: str(path), ENV_LOG_MAX_BYTES: str(cap)}
    with open(path, "ab") as err:
        subprocess.run([sys.executable, "-c", _CHILD], stderr=err, env=env, check=True, timeout=60)
    return path


def test_a_child_rotates_its_own_stderr(tmp_path: Path) -> None:
    path = _run_child(tmp_path, 4000)
    size = path.stat().st_size
    assert 0 < size <= 4000 + 200 and (tmp_path / "child.log.1").stat().st_size <= 4200
    text = path.read_text()
    # A plain write to stderr after rotations lands in the current file, not in `.1`.
    assert text.endswith("child: error: the last words\n")
    assert '"i": 199' in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.log", "child.log.1"]


def test_without_the_cap_the_same_child_grows_past_it(tmp_path: Path) -> None:
    path = _run_child(tmp_path, None)
    assert path.stat().st_size > 4 * 4200
    assert not (tmp_path / "child.log.1").exists()


def test_a_stderr_that_is_not_the_named_file_is_left_alone(tmp_path: Path) -> None:
    other = tmp_path / "other.log"
    other.write_text("")
    env = {**os.environ, ENV_LOG_FILE: str(other), ENV_LOG_MAX_BYTES: "100"}
    with open(tmp_path / "child.log", "ab") as err:
        subprocess.run([sys.executable, "-c", _CHILD], stderr=err, env=env, check=True, timeout=60)
    assert other.read_text() == "" and not (tmp_path / "other.log.1").exists()
    assert (tmp_path / "child.log").stat().st_size > 4 * 4200
