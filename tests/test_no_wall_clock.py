"""Time and identity go through trio and injected sources (SIM.md "World 2"): no component
reads the wall clock, sleeps outside trio, or draws a uuid."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "transport", "hv", "pager", "guest")

#: Calls that read time or draw an identity outside trio and the injected random source.
FORBIDDEN = frozenset(
    {
        "time.monotonic",
        "time.monotonic_ns",
        "time.time",
        "time.time_ns",
        "time.sleep",
        "time.perf_counter",
        "uuid.uuid1",
        "uuid.uuid4",
        "datetime.now",
        "datetime.datetime.now",
    }
)

#: Files left as they are, each with the reason (remove an entry when its reason goes).
EXEMPT: dict[str, str] = {}


def wall_clock_calls(source: str) -> list[str]:
    """`module.function` names in FORBIDDEN that `source` calls, as `line: name`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in FORBIDDEN:
                found.append(f"{node.lineno}: {name}")
        elif isinstance(node, ast.ImportFrom) and node.module in ("time", "uuid"):
            found += [f"{node.lineno}: from {node.module} import {a.name}" for a in node.names]
    return sorted(found, key=lambda item: int(item.split(":")[0]))


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_wall_clock_or_uuid(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    if rel in EXEMPT:
        pytest.skip(EXEMPT[rel])
    assert wall_clock_calls(path.read_text()) == []


def test_the_check_finds_what_it_looks_for() -> None:
    planted = (
        "import time, uuid\nfrom time import sleep\n"
        "t = time.monotonic()\ni = uuid.uuid4().hex\ntime.sleep(1)\n"
    )
    assert wall_clock_calls(planted) == [
        "2: from time import sleep",
        "3: time.monotonic",
        "4: uuid.uuid4",
        "5: time.sleep",
    ]
