"""A stopped pager's state directory damaged the way disks and people do: every page whose
bytes still exist is served, every other one is reported lost by gfn, no wrong byte."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import structlog.testing
import trio
from pager_harness import open_stack

from pager import PagerConfig, PageStore, RealDisk, Row, checksum
from pager.store import META, PAGES
from pager.store_format import EXTENT_BYTES, SLOT_SIZE, record_offset, slot_offset
from protocol import Errno, OpError, P2MType

N = 300  # three extents


def page(gfn: int) -> bytes:
    return random.Random(gfn).randbytes(SLOT_SIZE)


async def _store(state: Path) -> dict[int, Row]:
    store = await PageStore.open(RealDisk(state), lock_wait=1)
    await store.bind_instance("I")
    slots = store.reserve(N)
    rows = [Row(g, g + 1, slots[g], checksum(g, g + 1, page(g))) for g in range(N)]
    await store.persist(rows, [page(g) for g in range(N)])
    await store.close()
    return {r.gfn: r for r in rows}


async def _served(state: Path) -> tuple[set[int], set[int]]:
    """Reopen: (gfns served with their bytes, gfns lost); a wrong byte fails the test."""
    store = await PageStore.open(RealDisk(state), lock_wait=1)
    try:
        assert await store.bind_instance("I") == "same"
        rows = list(store.rows.values())
        served = set()
        for row, data in zip(rows, await store.read_slots(rows), strict=True):
            if isinstance(data, bytes):
                # A bool, not `assert a == b`: pytest would diff 4 KiB of bytes (minutes, CI set).
                same = data == page(row.gfn)
                assert same, f"gfn {row.gfn}: wrong bytes served"
                served.add(row.gfn)
        return served, set(range(N)) - served
    finally:
        await store.close()


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


def _write(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


@pytest.mark.parametrize("damage", ["delete", "garbage", "empty", "other_json"])
@pytest.mark.parametrize("name", [META, "lock"])
async def test_any_file_but_the_pages_file_damaged_loses_nothing(
    tmp_path: Path, name: str, damage: str
) -> None:
    await _store(tmp_path)
    path = tmp_path / name
    if damage == "delete":
        path.unlink()
    else:
        body = {"garbage": os.urandom(100), "empty": b"", "other_json": b'{"format": [1]}'}
        path.write_bytes(body[damage])
    assert await _served(tmp_path) == (set(range(N)), set())


@pytest.mark.parametrize(
    "size",
    [
        0,
        SLOT_SIZE - 1,  # the first header page cut
        slot_offset(10) + 100,  # inside slot 10
        EXTENT_BYTES - 1,  # slot 127 cut by a byte
        EXTENT_BYTES + SLOT_SIZE // 2,  # the second header page cut
        slot_offset(200),  # slots 0..199 whole
    ],
)
async def test_a_truncated_pages_file_serves_every_whole_slot(tmp_path: Path, size: int) -> None:
    rows = await _store(tmp_path)
    os.truncate(tmp_path / PAGES, size)
    header_whole = {e for e in range(3) if e * EXTENT_BYTES + SLOT_SIZE <= size}
    whole = {
        g
        for g, r in rows.items()
        if r.slot // 128 in header_whole and slot_offset(r.slot) + SLOT_SIZE <= size
    }
    served, lost = await _served(tmp_path)
    assert served == whole and lost == set(range(N)) - whole


async def test_a_flipped_byte_in_a_slot_or_a_header_loses_that_gfn_only(tmp_path: Path) -> None:
    rows = await _store(tmp_path)
    _write(tmp_path / PAGES, slot_offset(rows[7].slot) + 4000, b"\x00\x01")
    _flip(tmp_path / PAGES, record_offset(rows[140].slot) + 9)  # its gfn field
    with structlog.testing.capture_logs():
        served, lost = await _served(tmp_path)
    assert lost == {7, 140} and len(served) == N - 2


async def test_a_pager_on_a_damaged_store_serves_what_exists_and_reports_the_rest(
    tmp_path: Path,
) -> None:
    """The whole pager: meta.json and the lock deleted, the pages file cut inside the
    second extent, a byte flipped in a slot. The lost gfns are reported by number and
    marked broken (the guest gets EIO); every other page comes back with its bytes."""
    nr = 256
    with trio.fail_after(30):
        async with open_stack(tmp_path, nr_gfns=nr, vcpus=2) as stack, stack.guest() as guest:
            await guest.fill(2)
            run = stack.start_pager(PagerConfig(batch=32, target=16, on_exit="keep"))
            pager = await run.wait_started()
            await stack.until(pager, lambda: stack.domain_status()["tot_pages"] <= 16)
            rows = dict(pager.store.rows.items())
            run.stop.set()
            await run.finished.wait()
            types = stack.hv.domains[1].p2m.types
            paged = {g for g in range(nr) if types[g] == P2MType.paged}
            cut = EXTENT_BYTES + slot_offset(40)  # extent 1: slots 128..167 stay whole
            expect_lost = {g for g in paged if rows[g].slot >= 168}
            flipped = min(paged - expect_lost)  # a slot that the cut leaves whole
            _damage(stack.state_dir, slot_offset(rows[flipped].slot) + 5, cut)
            with structlog.testing.capture_logs() as logs:
                run = stack.start_pager(PagerConfig(batch=32, target=nr))
                pager = await run.wait_started()
            reported = {e["gfn"] for e in logs if e["event"] == "page.lost"}
            assert reported == expect_lost and expect_lost
            for g in sorted(paged - expect_lost - {flipped}):
                await guest.read_check(0, g)
            with pytest.raises(OpError) as info:
                await guest.read_check(0, flipped)
            assert info.value.errno == Errno.EIO
            for g in sorted(expect_lost):
                with pytest.raises(OpError):
                    await guest.read_check(1, g)
            assert stack.domain_status()["counts"]["broken"] == len(expect_lost) + 1


def _damage(state: Path, flip_at: int, cut: int) -> None:
    (state / META).unlink()
    (state / "lock").unlink()
    _write(state / PAGES, flip_at, b"\xa5")
    os.truncate(state / PAGES, cut)
