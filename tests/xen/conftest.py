"""Fixtures for the real xenpaging over xenshim: the binary, and the shim built from source.

Every test here skips, with its reason, where `make xenpaging` has not fetched the binary
or no C compiler is found; `.ci/run` runs `make xenpaging` first.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from xen_helpers import REPO, Shim

from stack import xenpaging


def _compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")


def _build(out: Path, *extra: str) -> None:
    cc = _compiler()
    assert cc is not None
    proc = subprocess.run(
        ["make", "-s", "-C", str(REPO / "xenshim"), f"OUT={out}", f"CC={cc}", *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def binary() -> Path:
    """Debian's xenpaging, unpacked by `make xenpaging`."""
    if not xenpaging.BINARY.is_file():
        pytest.skip(f"xenpaging not unpacked at {xenpaging.BINARY}: run `make xenpaging`")
    return xenpaging.BINARY


@pytest.fixture(scope="session")
def shim(tmp_path_factory: pytest.TempPathFactory, binary: Path) -> Shim:
    """The shim built from this tree's sources (not whatever build/ holds)."""
    if _compiler() is None:
        pytest.skip("no C compiler (cc or gcc) to build xenshim")
    out = tmp_path_factory.mktemp("xenshim")
    _build(out)
    return Shim(binary=binary, lib_dir=out)


@pytest.fixture(scope="session")
def asan_shim(tmp_path_factory: pytest.TempPathFactory, binary: Path) -> Shim:
    """The shim under AddressSanitizer (its runtime preloaded: xenpaging is not built with it)."""
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler (cc or gcc) to build xenshim")
    runtime = subprocess.run(
        [cc, "-print-file-name=libasan.so"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not runtime or not Path(runtime).exists():
        pytest.skip(f"{cc} has no AddressSanitizer runtime (libasan)")
    out = tmp_path_factory.mktemp("xenshim-asan")
    _build(out, "SAN=-fsanitize=address -fno-omit-frame-pointer", "CFLAGS=-O1 -g")
    return Shim(binary=binary, lib_dir=out, preload=str(Path(runtime).resolve()))
