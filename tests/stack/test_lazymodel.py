"""The lazy file system's semantics (stack/lazymodel.py), without FUSE: what a sync makes
durable, what a power cut leaves in the backing directory, what reads see before a sync."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from pager.disk import SECTOR
from stack.lazymodel import LazyDisk


def _cut(disk: LazyDisk, *, harsh: bool = False, seed: int = 0) -> LazyDisk:
    """Power loss, then what a fresh mount over the same backing directory sees."""
    disk.cut(harsh=harsh, seed=seed)
    return LazyDisk(disk.backing)


def _read(disk: LazyDisk, path: str) -> bytes:
    node = disk.lookup(path)
    return disk.read(node, 1 << 20, 0)


def _durable_file(disk: LazyDisk, path: str, data: bytes = b"") -> None:
    """A file whose name and bytes are durable."""
    node = disk.create(path, 0o644)
    if data:
        disk.write(node, 0, data)
    disk.fsync(node)
    disk.fsyncdir()


def test_a_synced_write_survives_a_cut_and_an_unsynced_one_does_not(tmp_path: Path) -> None:
    disk = LazyDisk(tmp_path)
    _durable_file(disk, "/f", b"A" * 4096)
    node = disk.lookup("/f")
    disk.write(node, 0, b"B" * 4096)
    disk.fsync(node)
    disk.write(node, 4096, b"C" * 4096)  # never synced
    after = _cut(disk)
    assert _read(after, "/f") == b"B" * 4096
    assert (tmp_path / "f").read_bytes() == b"B" * 4096


def test_reads_see_unsynced_writes_while_the_disk_holds_only_synced_bytes(tmp_path: Path) -> None:
    disk = LazyDisk(tmp_path)
    _durable_file(disk, "/f", b"0123456789")
    node = disk.lookup("/f")
    disk.write(node, 2, b"xy")
    disk.write(node, 12, b"!")  # past the end: a hole of zeros
    assert disk.read(node, 100, 0) == b"01xy456789\0\0!"
    assert disk.attrs(node)["st_size"] == 13
    assert (tmp_path / "f").read_bytes() == b"0123456789"
    disk.truncate(node, 4)
    assert disk.read(node, 100, 0) == b"01xy"
    disk.fsync(node)
    assert (tmp_path / "f").read_bytes() == b"01xy"


def test_a_torn_write_keeps_only_whole_sectors_of_its_prefix(tmp_path: Path) -> None:
    old, new = b"o" * 4096, bytes(range(256)) * 16
    torn = None
    for seed in range(200):
        backing = tmp_path / str(seed)
        backing.mkdir()
        disk = LazyDisk(backing)
        _durable_file(disk, "/pages.bin", old)
        disk.write(disk.lookup("/pages.bin"), 0, new)
        report = disk.cut(harsh=True, seed=seed)
        if report["writes_torn"]:
            torn = (backing / "pages.bin").read_bytes()
            break
    assert torn is not None, "no seed in 200 tore the write"
    assert len(torn) == 4096
    kept = next(i for i in range(0, 4096 + 1, SECTOR) if torn[i:] == old[i:])
    assert 0 < kept < 4096 and kept % SECTOR == 0
    assert torn[:kept] == new[:kept]


def test_a_harsh_cut_keeps_some_writes_in_order_and_says_how_many(tmp_path: Path) -> None:
    kept_some = lost_some = False
    for seed in range(40):
        backing = tmp_path / str(seed)
        backing.mkdir()
        disk = LazyDisk(backing)
        _durable_file(disk, "/f", bytes(8 * SECTOR))
        node = disk.lookup("/f")
        for i in range(8):
            disk.write(node, i * SECTOR, bytes([i + 1]) * SECTOR)
        report = disk.cut(harsh=True, seed=seed)
        assert report["unsynced_writes"] == 8
        assert report["writes_lost"] + report["writes_kept"] == 8
        data = (backing / "f").read_bytes()
        survived = [i for i in range(8) if data[i * SECTOR] == i + 1]
        assert len(survived) == report["writes_kept"]  # sector-sized: none can be torn
        kept_some |= 0 < len(survived)
        lost_some |= len(survived) < 8
    assert kept_some and lost_some


def test_a_gentle_cut_loses_every_unsynced_write(tmp_path: Path) -> None:
    disk = LazyDisk(tmp_path)
    _durable_file(disk, "/f", b"keep")
    node = disk.lookup("/f")
    for i in range(10):
        disk.write(node, i, b"z")
    report = disk.cut(harsh=False, seed=1)
    assert (report["unsynced_writes"], report["writes_lost"], report["writes_torn"]) == (10, 10, 0)
    assert (tmp_path / "f").read_bytes() == b"keep"


def test_a_new_file_needs_a_directory_sync_not_only_its_own(tmp_path: Path) -> None:
    disk = LazyDisk(tmp_path)
    node = disk.create("/new", 0o644)
    disk.write(node, 0, b"data")
    disk.fsync(node)  # its bytes are durable, its name is not
    assert not (tmp_path / "new").exists()
    after = _cut(disk)
    with pytest.raises(OSError) as exc:
        after.lookup("/new")
    assert exc.value.errno == errno.ENOENT
    # The same, then a directory sync: name and synced bytes survive.
    node = after.create("/new", 0o644)
    after.write(node, 0, b"data")
    after.fsync(node)
    after.fsyncdir()
    assert _read(_cut(after), "/new") == b"data"


def test_renames_and_unlinks_are_undone_by_a_cut_until_the_directory_is_synced(
    tmp_path: Path,
) -> None:
    disk = LazyDisk(tmp_path)
    _durable_file(disk, "/a", b"A")
    _durable_file(disk, "/b", b"B")
    disk.create("/sub", 0o755, is_dir=True)
    disk.fsyncdir()
    disk.rename("/a", "/sub/a2")
    disk.unlink("/b")
    assert disk.listdir(disk.lookup("/")) == ["sub"]
    assert disk.listdir(disk.lookup("/sub")) == ["a2"]
    report = disk.cut(harsh=False, seed=0)
    assert report["meta_ops_lost"] == 2
    after = LazyDisk(tmp_path)
    assert after.listdir(after.lookup("/")) == ["a", "b", "sub"]
    assert after.listdir(after.lookup("/sub")) == []
    # Synced: both stick; the rename replaces a file that was there.
    _durable_file(after, "/sub/a2", b"old")
    after.rename("/a", "/sub/a2")
    after.unlink("/b")
    after.fsyncdir()
    final = _cut(after)
    assert final.listdir(final.lookup("/")) == ["sub"]
    assert _read(final, "/sub/a2") == b"A"


def test_a_harsh_cut_keeps_a_prefix_of_the_name_journal(tmp_path: Path) -> None:
    seen = set()
    for seed in range(30):
        backing = tmp_path / str(seed)
        backing.mkdir()
        disk = LazyDisk(backing)
        for name in ("/1", "/2", "/3", "/4"):
            disk.create(name, 0o644)
        report = disk.cut(harsh=True, seed=seed)
        names = sorted(p.name for p in backing.iterdir())
        kept = 4 - report["meta_ops_lost"]
        assert names == ["1", "2", "3", "4"][:kept]  # in order: never 3 without 1 and 2
        seen.add(kept)
    assert len(seen) > 2


def test_a_lying_disk_makes_nothing_durable(tmp_path: Path) -> None:
    disk = LazyDisk(tmp_path)
    _durable_file(disk, "/f", b"before")
    disk.lying = True
    node = disk.lookup("/f")
    disk.write(node, 0, b"AFTER!")
    disk.fsync(node)
    disk.create("/g", 0o644)
    disk.fsyncdir()
    assert disk.counts["lied_syncs"] == 2
    after = _cut(disk)
    assert _read(after, "/f") == b"before"
    assert after.listdir(after.lookup("/")) == ["f"]


def test_after_a_cut_the_disk_refuses_everything(tmp_path: Path) -> None:
    disk = LazyDisk(tmp_path)
    _durable_file(disk, "/f", b"x")
    node = disk.lookup("/f")
    disk.cut(harsh=False, seed=0)
    for op in (
        lambda: disk.read(node, 1, 0),
        lambda: disk.write(node, 0, b"y"),
        lambda: disk.fsync(node),
        lambda: disk.create("/g", 0o644),
    ):
        with pytest.raises(OSError) as exc:
            op()
        assert exc.value.errno == errno.EIO


def test_a_clean_unmount_writes_everything_out(tmp_path: Path) -> None:
    disk = LazyDisk(tmp_path)
    disk.create("/d", 0o755, is_dir=True)
    node = disk.create("/d/f", 0o644)
    disk.write(node, 0, b"unsynced")
    disk.flush_all()
    assert (tmp_path / "d" / "f").read_bytes() == b"unsynced"
    assert _read(_cut(disk), "/d/f") == b"unsynced"


def test_an_aimed_cut_trips_on_the_chosen_write_and_finds_it_unsynced(tmp_path: Path) -> None:
    disk = LazyDisk(tmp_path)
    _durable_file(disk, "/f", b"A" * 4096)
    node = disk.lookup("/f")
    disk.arm_trip(2)  # let two writes through, trip on the third
    disk.write(node, 0, b"B" * 512)
    disk.write(node, 512, b"C" * 512)
    assert not disk.tripped and not disk.hold_answer
    disk.write(node, 1024, b"D" * 512)
    assert disk.tripped and disk.hold_answer  # the third: its answer waits for the cut
    disk.write(node, 1536, b"E" * 512)  # (the FUSE loop would not get here before the cut)
    assert not disk.power_gone.is_set()
    report = disk.cut(harsh=False, seed=0)
    assert disk.power_gone.is_set()
    assert report["aimed"] and report["unsynced_writes"] == 4 and report["writes_lost"] == 4
    assert (tmp_path / "f").read_bytes() == b"A" * 4096


def test_a_trip_disarmed_before_any_write_leaves_the_cut_unaimed(tmp_path: Path) -> None:
    disk = LazyDisk(tmp_path)
    _durable_file(disk, "/f", b"A" * 4096)
    disk.arm_trip(0)
    assert disk.disarm_trip() is False
    disk.write(disk.lookup("/f"), 0, b"B")
    assert not disk.tripped and not disk.hold_answer
    assert disk.cut(harsh=False, seed=0)["aimed"] is False
