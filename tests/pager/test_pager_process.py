"""`python -m pager` as a real process against a real `python -m hv`: SIGKILL at crash
points (by --faults and by XPEMU_FAULTS), restart, nothing lost; start order; bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from pager_harness import Guest

from transport import Client, open_unix_client

NR = 256
PY = sys.executable


class Procs:
    """Child processes of one test, killed on every way out."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[trio.Process] = []
        self.logs: dict[str, Path] = {}

    async def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> trio.Process:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            proc = await trio.lowlevel.open_process(
                [PY, "-m", *args],
                stdout=fd,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        finally:
            os.close(fd)
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()


@asynccontextmanager
async def processes(tmp: Path) -> AsyncIterator[Procs]:
    procs = Procs(tmp)
    try:
        yield procs
    finally:
        procs.kill_all()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            for proc in procs.procs:
                await proc.wait()


async def connect(run: Path, role: str, sock: str = "privcmd.sock") -> Any:
    """An open_unix_client context once hv listens (bounded by the caller's fail_after)."""
    while True:
        try:
            stream = await trio.open_unix_socket(str(run / sock))
        except OSError:
            await trio.sleep(0.02)  # hv is starting: nothing to wait on but the socket
            continue
        await stream.aclose()
        return open_unix_client(str(run / sock), role)


async def status(control: Client) -> dict[str, Any]:
    return (await control.call("status"))["domains"][0]


async def wait_status(control: Client, pred: Any) -> dict[str, Any]:
    """Poll hv's status until `pred` holds: a separate process has no event to wait on."""
    while not pred(st := await status(control)):  # noqa: ASYNC110 (another process's state)
        await trio.sleep(0.02)
    return st


async def wait_log(path: Path, text: str) -> None:
    """Wait until a child's log shows `text` (its only sign of progress)."""
    while text not in await trio.Path(path).read_text():  # noqa: ASYNC110 (another process)
        await trio.sleep(0.02)


def pager_args(run: Path, state: Path, *extra: str) -> list[str]:
    return ["pager", "--run-dir", str(run), "--state-dir", str(state), "--batch", "16", *extra]


async def test_sigkill_at_crash_points_then_restart(tmp_path: Path) -> None:
    run, state = tmp_path / "run", tmp_path / "state"
    run.mkdir()
    with trio.fail_after(60):
        async with processes(tmp_path) as procs:
            await procs.start("hv", "hv", "--run-dir", str(run), "--nr-gfns", str(NR))
            async with (
                await connect(run, "control") as control,
                await connect(run, "guest", "guest.sock") as guest_client,
            ):
                await control.hello()
                await guest_client.hello(1)
                guest = Guest(guest_client, NR)
                await guest.fill(2)
                await control.call("set_target", domid=1, tot_pages=64)
                # 1. Dies by SIGKILL in the page-out pipeline, after an evict.
                p1 = await procs.start(
                    "pager1", *pager_args(run, state, "--faults", "after_evict@3")
                )
                assert await p1.wait() == -signal.SIGKILL
                # hv notices the dead pager's socket close on its own time.
                st = await wait_status(control, lambda s: not s["pager"]["attached"])
                assert st["paged_pages"] >= 32
                # 2. Armed through the environment; dies in the page-in pipeline, with a
                # prep sent and its resume not.
                p2 = await procs.start(
                    "pager2", *pager_args(run, state), env={"XPEMU_FAULTS": "before_resume@2"}
                )
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(guest.verify_all, 2)
                    assert await p2.wait() == -signal.SIGKILL
                    st = await status(control)
                    assert st["paused_vcpus"] != []  # the guest waits for the next pager
                    # 3. A clean pager recovers; the guest's paused accesses complete.
                    p3 = await procs.start("pager3", *pager_args(run, state))
                await guest.verify_all(2)
                await wait_status(control, lambda s: s["tot_pages"] <= 64)
                p3.send_signal(signal.SIGTERM)
                assert await p3.wait() == 0
                st = await status(control)
                assert st["paged_pages"] == 0 and not st["pager"]["attached"]
                assert st["paused_vcpus"] == []
                assert (await control.call("check"))["violations"] == []
                await guest.verify_all(2)
            log3 = procs.logs["pager3"].read_text()
            assert "pager.recovered" in log3 and "pager.detached" in log3
            assert "page.lost" not in log3
            assert "fault.crash" in procs.logs["pager1"].read_text()


async def test_pager_started_before_hv_waits_for_it(tmp_path: Path) -> None:
    run, state = tmp_path / "run", tmp_path / "state"
    run.mkdir()
    with trio.fail_after(30):
        async with processes(tmp_path) as procs:
            pager = await procs.start("pager", *pager_args(run, state, "--target", "100"))
            # Its log says it waits (a fixed pause lost the race to a slow start under load).
            await wait_log(procs.logs["pager"], "pager.waiting_for_hv")
            assert pager.returncode is None  # still waiting for privcmd.sock
            await procs.start("hv", "hv", "--run-dir", str(run), "--nr-gfns", str(NR))
            async with await connect(run, "control") as control:
                await control.hello()
                await wait_status(control, lambda s: s["tot_pages"] <= 100)
                pager.send_signal(signal.SIGINT)
                assert await pager.wait() == 0
                assert (await status(control))["paged_pages"] == 0


async def test_keep_on_exit_then_takeover_by_a_new_process(tmp_path: Path) -> None:
    run, state = tmp_path / "run", tmp_path / "state"
    run.mkdir()
    with trio.fail_after(30):
        async with processes(tmp_path) as procs:
            await procs.start("hv", "hv", "--run-dir", str(run), "--nr-gfns", str(NR))
            async with (
                await connect(run, "control") as control,
                await connect(run, "guest", "guest.sock") as guest_client,
            ):
                await control.hello()
                await guest_client.hello(1)
                guest = Guest(guest_client, NR)
                await guest.fill(2)
                args = pager_args(run, state, "--target", "32", "--on-exit", "keep")
                p1 = await procs.start("pager1", *args)
                await wait_status(control, lambda s: s["tot_pages"] <= 32)
                p1.send_signal(signal.SIGTERM)
                assert await p1.wait() == 0
                assert (await status(control))["paged_pages"] >= NR - 32  # kept out
                p2 = await procs.start("pager2", *pager_args(run, state, "--policy", "clock"))
                await guest.verify_all(2)
                p2.send_signal(signal.SIGTERM)
                assert await p2.wait() == 0
                assert (await status(control))["paged_pages"] == 0


def test_bad_command_lines_exit_2_with_one_line(tmp_path: Path) -> None:
    for extra in (["--faults", "after_lunch@1"], ["--batch", "0"], ["--policy", "lru"]):
        proc = subprocess.run(
            [PY, "-m", "pager", "--run-dir", str(tmp_path), "--state-dir", str(tmp_path), *extra],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2, extra
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip(), extra


def test_an_unknown_crash_point_is_refused_at_start(tmp_path: Path) -> None:
    """Armed by --faults or by XPEMU_FAULTS, a point the code does not have is one line on
    stderr and exit 2, before anything else happens (no waiting for hv)."""
    base = [PY, "-m", "pager", "--run-dir", str(tmp_path), "--state-dir", str(tmp_path / "s")]
    for argv, env in (
        ([*base, "--faults", "after_write@1,after_lunch@2"], {}),
        (base, {"XPEMU_FAULTS": "after_lunch%0.5"}),
    ):
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, env={**os.environ, **env}
        )
        assert proc.returncode == 2, (argv, env)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "after_lunch" in proc.stderr and "unknown crash point" in proc.stderr
        assert not (tmp_path / "s").exists()  # refused before the store was touched


def test_no_hv_is_one_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            PY,
            "-m",
            "pager",
            "--run-dir",
            str(tmp_path),
            "--state-dir",
            str(tmp_path / "s"),
            "--connect-timeout",
            "0.3",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "no hv listening" in proc.stderr and "Traceback" not in proc.stderr


async def test_sigterm_while_waiting_for_hv_exits_at_once(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with processes(tmp_path) as procs:
            pager = await procs.start("pager", *pager_args(tmp_path, tmp_path / "state"))
            await wait_log(procs.logs["pager"], "pager.waiting_for_hv")  # handlers are in
            pager.send_signal(signal.SIGTERM)
            with trio.fail_after(5):
                assert await pager.wait() == 0
