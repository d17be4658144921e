"""The simulated disk keeps exactly the durability promises of `pager.disk`, and breaks them
only the ways SIM.md allows."""

from __future__ import annotations

import errno
import random

import pytest
import trio

from pager.disk import SECTOR, Disk
from sim.disk import PROCESS, DiskFaults, SimDisk


def _disk(seed: int = 1, **faults: float) -> SimDisk:
    return SimDisk(random.Random(seed), DiskFaults(**faults))


def _is_disk(d: Disk) -> Disk:
    return d


async def _file(disk: SimDisk, name: str = "f", data: bytes = b"") -> None:
    f = await disk.open(name, create=True)
    if data:
        await f.pwritev([(0, data)])
    await f.sync()
    await disk.sync_dir()


async def test_is_a_disk_and_reads_see_unsynced_writes() -> None:
    disk = _is_disk(_disk())
    f = await disk.open("a", create=True)
    await f.pwritev([(0, b"hello"), (10, b"x")])
    assert await f.pread(100, 0) == b"hello" + bytes(5) + b"x"
    assert await f.size() == 11
    assert await f.preadv([(5, 0), (1, 10), (4, 50)]) == [b"hello", b"x", b""]
    await f.truncate(3)
    assert await f.pread(10, 0) == b"hel"


async def test_process_crash_keeps_unsynced_writes_and_kills_handles() -> None:
    disk = _disk()
    await _file(disk, "f", b"A" * 1024)
    f = await disk.open("f")
    await f.pwritev([(0, b"B" * 1024)])
    disk.crash()
    with pytest.raises(OSError) as info:
        await f.pread(1, 0)
    assert info.value.errno == errno.EBADF
    assert disk.contents("f") == b"B" * 1024


async def test_a_dead_process_changes_nothing_on_the_disk() -> None:
    disk = _disk()
    await _file(disk, "a", b"x")
    token = PROCESS.set(disk.epoch)  # this task belongs to the process that dies now
    try:
        disk.crash()
        for op in (
            disk.rename("a", "b"),
            disk.remove("a"),
            disk.mkdir("d"),
            disk.open("c", create=True),
            disk.sync_dir(),
            disk.lock(0.0),
        ):
            with pytest.raises(OSError) as err:
                await op
            assert err.value.errno == errno.EBADF
    finally:
        PROCESS.reset(token)
    assert await disk.listdir() == ["a"]  # a live caller sees the tree untouched
    await (await disk.lock(0.0)).release()  # and the lock was never taken


async def test_power_loss_drop_loses_every_unsynced_write_only() -> None:
    disk = _disk()
    await _file(disk, "f", b"A" * 2048)
    f = await disk.open("f")
    await f.pwritev([(0, b"B" * 512)])
    await f.sync()
    await f.pwritev([(512, b"C" * 512), (4096, b"D")])
    stats = disk.power_loss("drop")
    assert stats["lost"] == 2
    assert disk.contents("f") == b"B" * 512 + b"A" * 1536


async def test_power_loss_subset_tears_one_write_at_a_sector_boundary() -> None:
    torn_seen = kept_seen = 0
    for seed in range(40):
        disk = _disk(seed)
        await _file(disk, "f", bytes(16 * SECTOR))
        f = await disk.open("f")
        # Writes that neither start on a sector boundary nor overlap: each one's region
        # shows exactly what of it survived.
        writes = [(100 + i * 2000, bytes([i + 1]) * 1500) for i in range(4)]
        for w in writes:
            await f.pwritev([w])
        stats = disk.power_loss("subset")
        after = disk.contents("f")
        assert stats.get("kept", 0) + stats.get("lost", 0) == 4
        assert stats.get("torn", 0) <= 1
        torn_seen += stats.get("torn", 0)
        kept_seen += stats.get("kept", 0)
        for off, data in writes:
            region = after[off : off + len(data)]
            n = len(region) - len(region.lstrip(data[:1])) if region[:1] == data[:1] else 0
            assert region == data[:n] + bytes(len(data) - n), seed
            # Whole, nothing, or cut at an absolute sector boundary.
            assert n in (0, len(data)) or (off + n) % SECTOR == 0, (seed, off, n)
    assert torn_seen > 10 and kept_seen > 40


async def test_metadata_is_durable_only_after_sync_dir() -> None:
    disk = _disk()
    await disk.mkdir("d")
    await disk.sync_dir()
    f = await disk.open("d/new", create=True)
    await f.pwritev([(0, b"data")])
    await f.sync()  # the data is durable, the name is not
    await _file(disk, "old", b"old")
    await disk.rename("old", "renamed")
    disk.power_loss("drop")
    assert await disk.listdir("d") == []
    assert await disk.listdir() == ["d", "old"]
    # ... and after sync_dir, they survive.
    await disk.rename("old", "renamed")
    f = await disk.open("d/new", create=True)
    await disk.sync_dir("d")
    await disk.sync_dir()
    disk.power_loss("drop")
    assert await disk.listdir() == ["d", "renamed"]
    assert await disk.listdir("d") == ["new"]
    assert disk.contents("renamed") == b"old"


async def test_remove_and_errors() -> None:
    disk = _disk()
    with pytest.raises(FileNotFoundError):
        await disk.open("missing")
    with pytest.raises(FileNotFoundError):
        await disk.open("nodir/x", create=True)
    await _file(disk, "f", b"x")
    await disk.remove("f")
    assert not await disk.exists("f")
    with pytest.raises(FileNotFoundError):
        await disk.remove("f")
    disk.power_loss("drop")  # the remove was not synced: the file is back
    assert await disk.exists("f")


async def test_eio_faults_fire_by_rate() -> None:
    disk = _disk(eio_write=1.0)
    f = await disk.open("f", create=True)
    with pytest.raises(OSError) as info:
        await f.pwritev([(0, b"x")])
    assert info.value.errno == errno.EIO
    disk = _disk(eio_read=1.0)
    f = await disk.open("f", create=True)
    await f.pwritev([(0, b"x")])
    with pytest.raises(OSError):
        await f.pread(1, 0)
    assert isinstance((await f.preadv([(1, 0)]))[0], OSError)
    disk = _disk()
    await _file(disk, "f")
    disk.faults = DiskFaults(eio_sync=1.0)
    f = await disk.open("f")
    await f.pwritev([(0, b"x")])
    with pytest.raises(OSError):
        await f.sync()
    disk.power_loss("drop")  # the failed sync made nothing durable
    assert disk.contents("f") == b""


async def test_enospc_on_growth_and_capacity() -> None:
    disk = SimDisk(random.Random(0), DiskFaults(capacity=1000))
    f = await disk.open("f", create=True)
    await f.pwritev([(0, bytes(1000))])
    await f.pwritev([(0, b"rewrite in place is fine")])
    with pytest.raises(OSError) as info:
        await f.pwritev([(1000, b"x")])
    assert info.value.errno == errno.ENOSPC
    disk = _disk(enospc=1.0)
    f = await disk.open("f", create=True)
    with pytest.raises(OSError):
        await f.pwritev([(0, b"x")])


async def test_latent_sector_error_reads_back_wrong_until_rewritten() -> None:
    disk = _disk(latent=1.0)
    f = await disk.open("f", create=True)
    data = bytes(range(256)) * 8  # 2048 bytes: four sectors
    await f.pwritev([(0, data)])
    got = await f.pread(len(data), 0)
    assert got != data and len(got) == len(data)
    assert f.pread_cached(len(data), 0) is None  # never served from "cache" either
    bad = [i // SECTOR for i in range(len(data)) if got[i] != data[i]]
    assert len(set(bad)) == 1
    disk.faults = DiskFaults()
    await f.pwritev([(0, data)])
    assert await f.pread(len(data), 0) == data


async def test_misdirected_write_lands_elsewhere() -> None:
    disk = _disk()
    await _file(disk, "f", bytes(16 * SECTOR))
    disk.faults = DiskFaults(misdirect=1.0)
    f = await disk.open("f")
    await f.pwritev([(4 * SECTOR, b"\xff" * SECTOR)])
    got = disk.contents("f")
    assert got[4 * SECTOR : 5 * SECTOR] == bytes(SECTOR)  # not where it was meant to go
    assert got.count(b"\xff") == SECTOR  # but somewhere
    assert disk.counters["fault.misdirect"] == 1


async def test_slow_sync_takes_trio_time(autojump_clock: trio.testing.MockClock) -> None:
    disk = _disk(slow_sync=1.0, slow_sync_s=3.0)
    f = await disk.open("f", create=True)
    t0 = trio.current_time()
    await f.sync()
    assert trio.current_time() - t0 == pytest.approx(3.0)


async def test_lock_is_exclusive_waits_and_is_freed_by_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    disk = _disk()
    lock = await disk.lock(1.0)
    t0 = trio.current_time()
    with pytest.raises(BlockingIOError):
        await disk.lock(2.0)
    assert trio.current_time() - t0 == pytest.approx(2.0)
    async with trio.open_nursery() as nursery:
        got: list[object] = []

        async def waiter() -> None:
            got.append(await disk.lock(10.0))

        nursery.start_soon(waiter)
        await trio.sleep(1.0)
        await lock.release()
    assert got
    disk.crash()  # the holder died: the lock is free again
    await disk.lock(0.0)


async def test_same_seed_same_faults() -> None:
    async def run(seed: int) -> tuple[str, dict[str, int]]:
        disk = _disk(seed, latent=0.3, misdirect=0.3)
        f = await disk.open("f", create=True)
        for i in range(50):
            await f.pwritev([(i * 700, bytes([i]) * 900)])
            if i % 7 == 0:
                await f.sync()
        disk.power_loss("subset")
        return disk.digest(), dict(disk.counters)

    assert await run(3) == await run(3)
    assert (await run(3))[0] != (await run(4))[0]
