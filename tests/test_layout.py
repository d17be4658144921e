"""DESIGN.md's layout table, enforced: which package may import which, read from the source.

Every module of every package is parsed with `ast`; each import (at any depth, relative
ones resolved) must name the package itself, the standard library, a third-party library
(only `msgpack` for protocol), or a project package the table allows.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The project's packages and what each may import of the others (DESIGN.md, "Layout").
ALLOWED: dict[str, frozenset[str]] = {
    "protocol": frozenset(),
    "transport": frozenset({"protocol"}),
    "hv": frozenset({"protocol", "transport"}),
    "pager": frozenset({"protocol", "transport"}),
    "guest": frozenset({"protocol", "transport"}),
    "sim": frozenset({"protocol", "transport", "hv", "pager", "guest"}),
    "stack": frozenset({"protocol", "transport", "hv", "pager", "guest", "sim"}),
}
PROJECT = frozenset(ALLOWED) | {"tests"}

#: Beyond the standard library, the only library protocol/ may use (no trio, no sockets).
PROTOCOL_LIBS = frozenset({"msgpack"})


def _imported(module: Path, package_parts: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line, top-level name) of every import in `module` (relative ones resolved)."""
    tree = ast.parse(module.read_text(), filename=str(module))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                assert node.module is not None
                found.append((node.lineno, node.module.split(".")[0]))
            else:
                # Relative: it stays inside the module's own top-level package (a climb out
                # of it fails at import time).
                found.append((node.lineno, package_parts[0]))
    return found


def layout_violations(root: Path) -> list[str]:
    """Every import under `root` that DESIGN.md's layout table forbids, one line each."""
    out: list[str] = []
    for package, allowed in ALLOWED.items():
        base = root / package
        if not base.is_dir():
            continue  # sim/ may not exist yet
        for module in sorted(base.rglob("*.py")):
            rel = module.relative_to(root)
            parts = rel.parent.parts
            for line, name in _imported(module, parts):
                if name == package or name == "__future__":
                    continue
                if name in PROJECT:
                    if name not in allowed:
                        out.append(f"{rel}:{line}: {package} may not import {name}")
                elif package == "protocol" and not (
                    name in sys.stdlib_module_names or name in PROTOCOL_LIBS
                ):
                    out.append(f"{rel}:{line}: protocol may not import {name} (stdlib, msgpack)")
    return out


def test_every_package_imports_only_what_the_layout_allows() -> None:
    assert (ROOT / "pager").is_dir() and (ROOT / "stack").is_dir()  # the real tree
    assert layout_violations(ROOT) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"pager/x.py": "import hv.domain\n"}, "pager/x.py:1: pager may not import hv"),
        (
            {"hv/a/b.py": "def f():\n    from guest import Shadow\n"},
            "hv/a/b.py:2: hv may not import guest",
        ),
        (
            {"guest/x.py": "from stack.cli import main\n"},
            "guest/x.py:1: guest may not import stack",
        ),
        ({"transport/x.py": "import hv\n"}, "transport/x.py:1: transport may not import hv"),
        (
            {"protocol/x.py": "import trio\n"},
            "protocol/x.py:1: protocol may not import trio (stdlib, msgpack)",
        ),
        (
            {"protocol/x.py": "from transport import Client\n"},
            "protocol/x.py:1: protocol may not import transport",
        ),
        ({"sim/x.py": "from stack import run_stack\n"}, "sim/x.py:1: sim may not import stack"),
        ({"stack/x.py": "import tests.conftest\n"}, "stack/x.py:1: stack may not import tests"),
    ],
)
def test_a_planted_violation_is_reported(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    assert layout_violations(_tree(tmp_path, files)) == [expected]


def test_what_the_layout_allows_is_not_reported(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "protocol/x.py": "import struct\nimport msgpack\nfrom . import y\n",
            "transport/x.py": "import trio\nfrom protocol import encode_frame\n",
            "pager/sub/x.py": "from ..core import Pager\nfrom transport import Client\n",
            "sim/x.py": "import hv, pager, guest\n",
            "stack/bench/x.py": "from ..procs import Child\nimport sim\nimport rich\n",
        },
    )
    assert layout_violations(root) == []
