"""xenshim's hand-written msgpack decoder (built under AddressSanitizer) against msgpack's own."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xen_helpers import REPO

HERE = Path(__file__).resolve().parent


def _build(out: Path, mp_source: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc or gcc) to build xenshim")
    src = REPO / "xenshim"
    flags = ["-Wall", "-Wextra", "-Werror", "-std=c11", "-g", "-fsanitize=address,undefined"]
    proc = subprocess.run(
        [cc, *flags, f"-I{src}", "-o", str(out), str(HERE / "mp_check.c"), str(mp_source)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 and "sanitize" in proc.stderr:
        pytest.skip(f"{cc} cannot build with AddressSanitizer: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("mpcheck") / "mp_check", REPO / "xenshim/mp.c")


def _run(driver: Path, inputs: list[bytes]) -> list[str]:
    data = b"".join(struct.pack(">I", len(i)) + i for i in inputs)
    proc = subprocess.run([str(driver)], input=data, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return proc.stdout.decode().splitlines()


def render(v: Any) -> str:
    """The driver's rendering of a value msgpack decoded."""
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return f"s'{v.encode().hex()}'"
    if isinstance(v, bytes):
        return f"b'{v.hex()}'"
    if isinstance(v, list):
        return "[" + ",".join(render(x) for x in v) + "]"
    return "{" + ",".join(f"{render(k)}:{render(x)}" for k, x in v.items()) + "}"


ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
scalars = st.none() | st.booleans() | ints | st.text(max_size=300) | st.binary(max_size=70000)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=10), inner, max_size=20)
    ),
    max_leaves=40,
)


# Each example runs the driver once: fewer examples than the project's default.
few = settings(max_examples=40)


@few
@given(st.lists(values, min_size=1, max_size=10))
def test_decodes_what_msgpack_encodes(driver: Path, batch: list[Any]) -> None:
    raw = [msgpack.packb(v, use_bin_type=True) for v in batch]
    assert _run(driver, raw) == [render(v) for v in batch]


@few
@given(values, st.data())
def test_truncated_or_padded_frames_are_refused(driver: Path, v: Any, data: st.DataObject) -> None:
    raw = msgpack.packb(v, use_bin_type=True)
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    assert _run(driver, [raw[:cut], raw + b"\xc0"]) == ["bad", "bad"]


@few
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=50))
def test_garbage_never_crashes(driver: Path, inputs: list[bytes]) -> None:
    out = _run(driver, inputs)  # ASan and UBSan abort the driver on any memory error
    assert len(out) == len(inputs)


def test_hostile_lengths_and_depth(driver: Path) -> None:
    deep = b"\x91" * 9 + b"\xc0"  # nine nested arrays: past the decoder's depth bound
    shallow = b"\x91" * 7 + b"\xc0"
    huge = [b"\xdd\xff\xff\xff\xff", b"\xdf\x80\x00\x00\x00", b"\xc6\xff\xff\xff\xf0ab"]
    out = _run(driver, [deep, shallow, *huge, b"\xca\x00\x00\x00\x00"])  # a float32: not ours
    assert out == ["bad", "[" * 7 + "nil" + "]" * 7, "bad", "bad", "bad", "bad"]


def test_a_planted_missing_bounds_check_is_caught(tmp_path: Path) -> None:
    """The checker fails when the decoder reads past its frame: bounds check removed."""
    good = (REPO / "xenshim/mp.c").read_text()
    check = "return (size_t)(r->end - r->p) >= n ? 0 : -1;"
    assert check in good
    planted = tmp_path / "mp.c"
    planted.write_text(good.replace(check, "(void)r; (void)n; return 0;"))
    broken = _build(tmp_path / "mp_check", planted)
    # a bin that claims 4096 bytes in a 40-byte frame, then one more element to read
    raw = msgpack.packb([b"x" * 4096, None], use_bin_type=True)[:40]
    assert _run(_build(tmp_path / "good", REPO / "xenshim/mp.c"), [raw]) == ["bad"]
    proc = subprocess.run([str(broken)], input=struct.pack(">I", 40) + raw,
                          capture_output=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode != 0
    assert b"AddressSanitizer" in proc.stderr
