"""A disk failing while the pager binds its store at start: a clean PagerError, a restart."""

from __future__ import annotations

import errno
from pathlib import Path

import trio
import trio.testing
from memdisk import MemDisk
from pager_harness import open_stack

from pager import PagerConfig, PagerError
from pager.disk import Disk, DiskFile, DiskProxy, FileProxy

NR = 16


class _FailingSync(FileProxy):
    def __init__(self, inner: DiskFile, disk: MetaEio) -> None:
        super().__init__(inner)
        self.disk = disk

    async def sync(self) -> None:
        if self.disk.failures:
            self.disk.failures -= 1
            raise OSError(errno.EIO, "Input/output error (test: sync of meta.json.tmp)")
        await self.inner.sync()


class MetaEio(DiskProxy):
    """`inner`, whose syncs of meta.json's temporary file fail `failures` times."""

    def __init__(self, inner: Disk, failures: int) -> None:
        super().__init__(inner)
        self.failures = failures

    def wrap(self, name: str, f: DiskFile) -> DiskFile:
        return _FailingSync(f, self) if name == "meta.json.tmp" else f


async def test_eio_writing_meta_at_start_fails_cleanly_and_a_restart_recovers(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Sim seed 972: the pager raised a bare StoreError out of run_pager (a traceback in
    a process, a "bug" in the sim); it must be the PagerError a process logs in one line
    and exits 1 on, and the next pager on the same disk starts and pages."""
    disk = MemDisk()
    config = PagerConfig(batch=4, concurrency=2, recheck_interval=0.05, target=8)
    with trio.fail_after(60):
        async with open_stack(tmp_path, streams="memory", nr_gfns=NR, vcpus=2) as stack:
            async with stack.guest() as guest:
                await guest.fill(2)
                first = stack.start_pager(config, disk=MetaEio(disk, failures=1))
                await first.finished.wait()
                assert type(first.error) is PagerError, repr(first.error)
                assert "writing meta.json failed" in str(first.error)
                assert "\n" not in str(first.error)
                second = stack.start_pager(config, disk=disk)
                pager = await second.wait_started()
                await stack.until(pager, lambda: stack.domain_status()["tot_pages"] <= 8)
                await guest.verify_all(2)
                await second.stop_ok()
                stack.assert_clean()
