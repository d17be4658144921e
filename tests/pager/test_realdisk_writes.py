"""`RealDiskFile`'s writes: adjacent (offset, data) pairs go out as one gathered `pwritev`
with no copy, everything lands in order, and a short write is finished, not dropped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from pager import RealDisk
from pager import realdisk as realdisk_mod

PAGE = 4096


def _writes() -> list[tuple[int, bytes]]:
    """Three adjacent pages, a gap, two adjacent pages, and a lone one: three runs."""
    offsets = [0, PAGE, 2 * PAGE, 5 * PAGE, 6 * PAGE, 9 * PAGE]
    return [(off, bytes([i + 1]) * PAGE) for i, off in enumerate(offsets)]


def _expected(writes: list[tuple[int, bytes]]) -> bytes:
    out = bytearray(10 * PAGE)
    for off, data in writes:
        out[off : off + len(data)] = data
    return bytes(out)


@pytest.mark.parametrize("synced", [False, True])
async def test_adjacent_writes_are_gathered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synced: bool
) -> None:
    calls: list[tuple[int, int]] = []  # (buffers, offset) of each pwritev
    real = os.pwritev

    def counting(fd: int, bufs: list[bytes], offset: int, *flags: int) -> int:
        calls.append((len(bufs), offset))
        return real(fd, bufs, offset, *flags)

    monkeypatch.setattr(realdisk_mod.os, "pwritev", counting)
    writes = _writes()
    with trio.fail_after(10):
        f = await RealDisk(tmp_path).open("pages", create=True)
        try:
            if synced:
                assert await f.pwritev_sync(writes) == []
            else:
                await f.pwritev(writes)
        finally:
            await f.close()
    assert calls == [(3, 0), (2, 5 * PAGE)]  # the lone page: one pwrite
    assert (tmp_path / "pages").read_bytes() == _expected(writes)


async def test_a_short_gathered_write_is_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwritev

    def short(fd: int, bufs: list[bytes], offset: int, *flags: int) -> int:
        # The kernel may write less than asked: here half a page short of all of it.
        data = b"".join(bufs)
        return real(fd, [data[: len(data) - PAGE // 2]], offset, *flags)

    monkeypatch.setattr(realdisk_mod.os, "pwritev", short)
    writes = _writes()
    with trio.fail_after(10):
        f = await RealDisk(tmp_path).open("pages", create=True)
        try:
            await f.pwritev_sync(writes)
        finally:
            await f.close()
    assert (tmp_path / "pages").read_bytes() == _expected(writes)


async def test_writes_land_in_the_order_given(tmp_path: Path) -> None:
    # Two writes of the same page: the later one wins, as the interface says.
    with trio.fail_after(10):
        f = await RealDisk(tmp_path).open("pages", create=True)
        try:
            await f.pwritev([(0, b"a" * PAGE), (PAGE, b"b" * PAGE), (0, b"c" * PAGE)])
        finally:
            await f.close()
    assert (tmp_path / "pages").read_bytes() == b"c" * PAGE + b"b" * PAGE
