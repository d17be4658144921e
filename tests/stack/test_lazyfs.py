"""The lazy file system through a real FUSE mount (stack/lazyfs.py run by stack/power.py):
what a program sees through the kernel, what a power cut leaves, and that nothing stays
mounted or running. Skipped, with the reason, where FUSE is not usable."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest
import trio
from stack_helpers import processes_mentioning

from stack.power import LazyFs, PowerControl, fuse_problem, is_mounted, mount_points
from stack.procs import StartError
from stack.schedule import Fault

pytestmark = pytest.mark.skipif(fuse_problem() is not None, reason=str(fuse_problem()))


async def _mount(tmp_path: Path) -> LazyFs:
    backing, mnt = tmp_path / "disk", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    fs = LazyFs(backing, mnt, tmp_path / "lazyfs.log")
    await fs.start(20)
    return fs


def _write(path: Path, data: bytes, offset: int, sync: bool) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _durable_f(mnt: Path) -> None:
    """`f` holding 4 KiB of "A", its bytes and its name synced."""
    await trio.to_thread.run_sync(_write, mnt / "f", b"A" * 4096, 0, True)
    await trio.to_thread.run_sync(_sync_dir, mnt)


async def test_through_the_kernel_synced_bytes_survive_a_cut_unsynced_do_not(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        fs = await _mount(tmp_path)
        try:
            mnt = fs.mount
            await _durable_f(mnt)
            await trio.to_thread.run_sync(_write, mnt / "f", b"B" * 4096, 4096, False)
            await trio.to_thread.run_sync(_write, mnt / "g", b"new", 0, True)
            # Reads overlay what is not yet durable; the disk holds only what is.
            assert (mnt / "f").read_bytes() == b"A" * 4096 + b"B" * 4096
            assert sorted(os.listdir(mnt)) == ["f", "g"]
            assert (fs.backing / "f").read_bytes() == b"A" * 4096
            assert sorted(os.listdir(fs.backing)) == ["f"]
            cut = await fs.request(op="cut", harsh=False, seed=0)
            assert cut["writes_lost"] >= 1 and cut["meta_ops_lost"] == 1  # g's creation
        finally:
            await fs.kill()
        assert not is_mounted(fs.mount)
        fs = LazyFs(fs.backing, fs.mount, fs.log_path)
        await fs.start(20)
        try:
            assert sorted(os.listdir(fs.mount)) == ["f"]
            assert (fs.mount / "f").read_bytes() == b"A" * 4096
        finally:
            await fs.stop()
    assert not is_mounted(fs.mount)
    assert processes_mentioning(str(fs.mount)) == []


async def test_a_tripped_write_is_held_until_the_cut_then_fails(tmp_path: Path) -> None:
    """An aimed cut: the write that trips is taken (unsynced) but not answered, so the
    cut finds it in flight; once the power is gone its writer gets EIO."""
    with trio.fail_after(60):
        fs = await _mount(tmp_path)
        try:
            mnt = fs.mount
            await _durable_f(mnt)
            await fs.request(op="trip", after=0)
            heard: list[object] = []

            async def writer() -> None:
                try:
                    await trio.to_thread.run_sync(_write, mnt / "f", b"B" * 4096, 0, False)
                    heard.append("answered")
                except OSError as exc:
                    heard.append(errno.errorcode[exc.errno or 0])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                while True:  # polled, as stack/power.py does: the control channel only answers
                    if (await fs.request(op="stats"))["tripped"]:
                        break
                    await trio.sleep(0.01)
                assert heard == []  # taken, not answered
                cut = await fs.request(op="cut", harsh=False, seed=0)
            assert heard == ["EIO"]
            assert cut["aimed"] and cut["unsynced_writes"] == 1 and cut["writes_lost"] == 1
            assert (fs.backing / "f").read_bytes() == b"A" * 4096
        finally:
            await fs.kill()
    assert not is_mounted(fs.mount)


def _sqlite_rows(path: Path, add: int) -> int:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY)")
        for _ in range(add):
            db.execute("INSERT INTO t VALUES (NULL)")  # each its own committed transaction
        return int(db.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        db.close()


async def test_sqlite_in_wal_mode_keeps_every_commit_across_cuts(tmp_path: Path) -> None:
    """What the pager's index needs: WAL (shared memory through mmap, locks, a directory
    sync at the WAL's creation) works through the mount, and commits survive cuts."""
    run_dir = tmp_path / "run"
    (run_dir / "state").mkdir(parents=True)

    class NoProcess:
        log_path = run_dir / "pager.log"
        pid = None
        running = False

    class NoPager:  # a supervisor that has stopped for good (power.PagerHost)
        restart_gate = trio.Event()
        pager = NoProcess()
        lives: list[object] = []
        stopped = True

        def kill(self, why: str) -> bool:
            return False

    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            power = PowerControl(run_dir, 20, nursery)
            await power.open()
            try:
                db = run_dir / "state" / "index.sqlite"
                assert await trio.to_thread.run_sync(_sqlite_rows, db, 50) == 50
                for i, harsh in enumerate((False, True, True)):
                    fault = Fault(1.0, "power", {"harsh": harsh, "seed": i})
                    await power.inject(fault, NoPager(), 1.0)
                    rows = await trio.to_thread.run_sync(_sqlite_rows, db, 10)
                    assert rows == 50 + 10 * (i + 1)
            finally:
                await power.close()
            nursery.cancel_scope.cancel()
    report = power.report()
    assert report["power_faults"] == 3 and report["aimed"] == 0  # nothing wrote: unaimed
    assert not is_mounted(run_dir / "state") and not (run_dir / "state.disk").exists()
    assert str(run_dir / "state") not in mount_points()
    assert processes_mentioning(str(run_dir)) == []
    assert _sqlite_rows(run_dir / "state" / "index.sqlite", 0) == 80  # put back at state/


async def test_a_mount_that_fails_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    backing = tmp_path / "disk"
    backing.mkdir()
    fs = LazyFs(backing, tmp_path / "no-such-dir", tmp_path / "lazyfs.log")
    with trio.fail_after(30), pytest.raises(StartError, match="did not mount") as exc:
        await fs.start(20)
    assert "\n" not in str(exc.value)
    assert processes_mentioning(str(backing)) == []
