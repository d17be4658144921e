"""Lost and misdirected header-page writes: the store never serves an older generation.

Two writes of one extent's header page go astray (lost, or landed at another offset):
the free record of gfn G's old copy, then the record of G paged out again. Both syncs
return. Were the phases taken as done, G would be evicted with its only copy named by no
durable record, and recovery would find the old page's record of G (older generation),
whose slot still holds G's old bytes, crc and all: wrong bytes. The store reads each
phase's header pages back from the media after the sync, so each of those phases raises
StoreError and leaves the index as it was: G is not evicted (the driver here plays hv's
part as the pager's pipelines do), and after a restart every frameless gfn reads back its
last bytes or an honest error, never other bytes.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from hookdisk import CallLog, HookedDisk
from memdisk import MemDisk

from pager import PageStore, RealDisk, Row, StoreError, checksum
from pager.disk import write_and_sync
from pager.store import PAGES
from pager.store_format import SLOT_SIZE, header_offset, slot_offset
from protocol import PAGE_SIZE

G = 7  # the gfn whose older generation must never come back


def page(gfn: int, version: int) -> bytes:
    return (gfn.to_bytes(2, "little") + version.to_bytes(4, "little")) * (PAGE_SIZE // 6) + (
        bytes(PAGE_SIZE % 6)
    )


def astray(mode: str, extent: int = 0) -> Any:
    """A `MemDisk.land` hook: the bytes of `extent`'s header page in any write of the
    pages file are lost ("lost") or land at slot 120's offset ("misdirect")."""
    lo = header_offset(extent)
    hi = lo + SLOT_SIZE
    elsewhere = slot_offset(120)

    def land(name: str, offset: int, data: bytes) -> list[tuple[int, bytes]]:
        end = offset + len(data)
        if name != PAGES or end <= lo or offset >= hi:
            return [(offset, data)]
        out = []
        if offset < lo:
            out.append((offset, data[: lo - offset]))
        if end > hi:
            out.append((hi, data[hi - offset :]))
        if mode == "misdirect":
            out.append((elsewhere, data[max(0, lo - offset) : hi - offset]))
        return out

    return land


class Driver:
    """hv's part: a batch is evicted only after its `persist` returned."""

    def __init__(self, disk: MemDisk) -> None:
        self.disk = disk
        self.hooked = HookedDisk(disk)
        self.frameless: dict[int, bytes] = {}  # gfn -> the bytes its only copy must hold
        self.resident: dict[int, bytes] = {g: page(g, 0) for g in range(20)}
        self.versions = 0

    async def open(self) -> PageStore:
        store = await PageStore.open(self.hooked, lock_wait=0)
        await store.bind_instance("inst")
        return store

    async def page_out(self, store: PageStore, gfns: list[int]) -> None:
        slots = store.reserve(len(gfns))
        rows, pages = [], []
        for g, s in zip(gfns, slots, strict=True):
            gen = store.next_gen()
            rows.append(Row(g, gen, s, checksum(g, gen, self.resident[g])))
            pages.append(self.resident[g])
        try:
            await store.persist(rows, pages)
        except StoreError:
            store.release(slots)  # the batch stays resident, as the pager's pipeline does
            raise
        for g in gfns:
            self.frameless[g] = self.resident.pop(g)

    async def page_in(self, store: PageStore, g: int) -> None:
        [data] = await store.read_slots([store.rows[g]])
        assert data == self.frameless[g], f"gfn {g}: wrong bytes at page-in"
        self.versions += 1
        self.resident[g] = page(g, self.versions)  # prep answered 0; the guest writes
        del self.frameless[g]

    async def check_restart(self) -> PageStore:
        """Reopen (what a restart's recovery finds) and check every frameless gfn."""
        store = await self.open()
        for g, want in self.frameless.items():
            row = store.rows.get(g)
            if row is None:
                continue  # lost: reported as EIO, honest
            [data] = await store.read_slots([row])
            # A bool, not `assert a == b`: pytest would diff 4 KiB of bytes.
            same = data == want
            assert same or isinstance(data, StoreError), (
                f"gfn {g}: wrong bytes after restart (row {row})"
            )
        return store


async def failed(phase: Any) -> bool:
    """True if the phase raised StoreError for a header page that did not land; the
    tests below check the restart first (the safety property), this after."""
    try:
        await phase
    except StoreError as exc:
        assert "did not land" in str(exc)
        return True
    return False


@pytest.mark.parametrize("mode", ["lost", "misdirect"])
async def test_two_astray_header_writes_never_serve_the_older_generation(mode: str) -> None:
    with trio.fail_after(10):
        disk = MemDisk()
        d = Driver(disk)
        store = await d.open()
        await d.page_out(store, [G, 1, 2])
        old, one = store.rows[G], store.rows[1]
        await d.page_in(store, G)  # G is resident again, with new bytes
        await d.page_in(store, 1)
        disk.land = astray(mode)
        before = dict(store.rows)
        free_list = store.free_slots
        # The free records of G's old copy and of 1's (whose slot the next page-out takes,
        # so that G's old slot keeps G's old bytes).
        free_failed = await failed(store.delete_rows([(G, old.gen), (1, one.gen)]))
        free_kept = dict(store.rows) == before and store.free_slots == free_list
        out_failed = await failed(d.page_out(store, [G]))  # G's new record, same page
        out_kept = dict(store.rows) == before and not {old.slot, one.slot} & set(store.slots._free)
        await store.close()
        disk.land = None
        again = await d.check_restart()  # never wrong bytes: the property itself
        assert free_failed and out_failed, "a phase whose header did not land returned"
        assert free_kept and out_kept, "a failed phase changed the index"
        assert G in d.resident and G not in d.frameless  # not evicted: its frame holds it
        await restart_and_page_out_again(d, again, old)


@pytest.mark.parametrize("mode", ["lost", "misdirect"])
async def test_one_astray_header_write_suffices_when_the_free_rides_the_page_out(
    mode: str,
) -> None:
    """G's old record is left to ride G's next page-out (the pipelines do that): that one
    header write names G's new copy and frees the old one; lost, the old page's record
    names G's old slot, untouched, crc and all."""
    with trio.fail_after(10):
        disk = MemDisk()
        d = Driver(disk)
        store = await d.open()
        await d.page_out(store, [G])
        old = store.rows[G]
        await d.page_in(store, G)
        disk.land = astray(mode)
        before = dict(store.rows)
        out_failed = await failed(d.page_out(store, [G]))  # a new slot; the old one freed
        kept = dict(store.rows) == before
        await store.close()
        disk.land = None
        again = await d.check_restart()
        assert out_failed and kept and G in d.resident
        await restart_and_page_out_again(d, again, old)


async def restart_and_page_out_again(d: Driver, again: PageStore, old: Row) -> None:
    """After the astray phases: the restarted store has G's stale record (hv's reconcile
    frees it: G has a frame), and once the disk behaves a page-out of G lands."""
    assert again.rows[G].gen == old.gen
    await again.delete_rows([(G, old.gen)])
    await d.page_out(again, [G])
    await again.close()
    third = await d.check_restart()
    assert third.rows[G].gen > old.gen and G in d.frameless
    await third.close()


async def test_the_read_back_is_one_media_read_per_header_page_and_sync_once() -> None:
    with trio.fail_after(10):
        disk = MemDisk()
        d = Driver(disk)
        store = await d.open()
        syncs, media = d.hooked.syncs, d.hooked.media_reads
        await d.page_out(store, list(range(20)))  # one extent
        assert d.hooked.syncs == syncs + 1 and d.hooked.media_reads == media + 1
        await store.close()


async def test_a_header_page_unreadable_on_the_media_fails_the_phase() -> None:
    with trio.fail_after(10):
        disk = MemDisk()
        d = Driver(disk)
        store = await d.open()
        await d.page_out(store, [1])
        before = dict(store.rows)
        disk.corrupt[PAGES] = {header_offset(0) + 100}  # a latent error in the header page
        with pytest.raises(StoreError, match="did not land"):
            await d.page_out(store, [2])
        assert dict(store.rows) == before
        disk.corrupt.clear()
        await d.page_out(store, [2])
        assert set(store.rows) == {1, 2}
        await store.close()


async def test_write_and_sync_reads_back_in_the_same_call_on_a_real_disk(
    tmp_path: Path,
) -> None:
    with trio.fail_after(10):
        disk = RealDisk(tmp_path)
        f = await disk.open("f", create=True)
        got = await write_and_sync(f, [(0, b"a" * 4096), (8192, b"b" * 4096)], [(4096, 8192)])
        assert got == [b"b" * 4096]
        assert await f.pread_media([(2, 4096), (1, 1 << 20)]) == [b"\0\0", b""]
        wrapped = CallLog(f)
        assert await write_and_sync(wrapped, [(2, b"xy")], [(4, 0)]) == [b"aaxy"]
        assert wrapped.calls == ["pwritev", "sync", "pread_media"]
        assert await write_and_sync(wrapped, [(2, b"zz")]) == []  # nothing to read back
        assert wrapped.calls[3:] == ["pwritev", "sync"]
        await f.close()


async def test_the_read_back_also_runs_when_the_crash_point_splits_write_and_sync() -> None:
    with trio.fail_after(10):
        disk = MemDisk()
        d = Driver(disk)
        store = await d.open()
        hits: list[int] = []
        disk.land = astray("lost")
        slots = store.reserve(1)
        gen = store.next_gen()
        row = Row(3, gen, slots[0], checksum(3, gen, d.resident[3]))
        with pytest.raises(StoreError, match="did not land"):
            await store.persist([row], [d.resident[3]], written=lambda: hits.append(1))
        assert hits == [1] and 3 not in store.rows
        disk.land = None
        await store.persist([row], [d.resident[3]], written=lambda: hits.append(2))
        assert hits == [1, 2] and store.rows[3] == row
        await store.close()


def _direct_ok(path: Path) -> bool:
    """Whether `path`'s filesystem opens files with O_DIRECT (tmpfs does not)."""
    probe = path / "probe"
    probe.write_bytes(b"x")
    try:
        os.close(os.open(probe, os.O_RDONLY | os.O_DIRECT))
    except OSError:
        return False
    return True


async def test_a_real_disk_reads_back_through_o_direct_any_range(tmp_path: Path) -> None:
    """Production reads back from the device, not the page cache: a second descriptor with
    O_DIRECT (POSIX_FADV_DONTNEED alone drops no page of a large folio, so the read-back
    would see the cache); unaligned ranges and ranges past the end read as pread does."""
    with trio.fail_after(10):
        disk = RealDisk(tmp_path)
        f = await disk.open("f", create=True)
        data = os.urandom(1 << 20)
        assert await write_and_sync(f, [(0, data)], [(4096, 8192)]) == [data[8192:12288]]
        reads = [(10, 3 * 4096 + 5), (100, len(data) - 50), (10, 2 * len(data)), (0, 4096)]
        want = [data[3 * 4096 + 5 : 3 * 4096 + 15], data[-50:], b"", b""]
        assert await f.pread_media(reads) == want
        if _direct_ok(tmp_path):
            assert f._direct is not None and f._direct >= 0
            assert fcntl.fcntl(f._direct, fcntl.F_GETFL) & os.O_DIRECT
        await f.close()
        assert f._direct == -1


async def test_a_real_disk_without_o_direct_falls_back_to_dropping_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_direct(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "no O_DIRECT here")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    with trio.fail_after(10):
        f = await RealDisk(tmp_path).open("f", create=True)
        assert await write_and_sync(f, [(0, b"ab" * 4096)], [(4, 4094)]) == [b"abab"]
        assert f._direct == -1
        await f.close()
