"""The simulated disk's `pread_media`: the durable bytes, as a read-back after a sync sees
them (pager/store.py checks each phase's header pages with it)."""

from __future__ import annotations

import random

import trio

from pager.disk import SECTOR
from sim.disk import DiskFaults, SimDisk


async def test_a_misdirected_write_does_not_read_back_where_it_was_aimed() -> None:
    with trio.fail_after(5):
        disk = SimDisk(random.Random(3))
        f = await disk.open("f", create=True)
        await f.pwritev([(0, bytes(16 * SECTOR))])
        await f.sync()
        disk.faults = DiskFaults(misdirect=1.0)
        await f.pwritev([(4 * SECTOR, b"\xff" * SECTOR)])
        await f.sync()
        assert disk.counters["fault.misdirect"] == 1
        [got] = await f.pread_media([(SECTOR, 4 * SECTOR)])
        assert got == bytes(SECTOR)  # the old bytes: the write did not land there


async def test_synced_writes_read_back_and_unsynced_ones_read_as_cached() -> None:
    with trio.fail_after(5):
        disk = SimDisk(random.Random(4))
        f = await disk.open("f", create=True)
        await disk.sync_dir()
        await f.pwritev([(0, b"a" * SECTOR), (SECTOR, b"b" * SECTOR)])
        await f.sync()
        assert await f.pread_media([(SECTOR, 0), (SECTOR, SECTOR)]) == [
            b"a" * SECTOR,
            b"b" * SECTOR,
        ]
        # Not synced: the kernel keeps dirty pages cached, so the read sees the write.
        await f.pwritev([(0, b"c" * SECTOR)])
        assert await f.pread_media([(SECTOR, 0)]) == [b"c" * SECTOR]
        disk.power_loss("drop")
        g = await disk.open("f")
        assert await g.pread_media([(SECTOR, 0)]) == [b"a" * SECTOR]
