"""`python -m hv` as a real process on real Unix sockets: lifecycle and bad input."""

from __future__ import annotations

import os
import signal
import stat
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from hv_helpers import REPO, hv_process, next_event, page, page_out, rsp, spawn

from protocol import MAX_FRAME, MemEventFlag
from transport import Connection, ConnectionClosed, open_connection, open_unix_client


@asynccontextmanager
async def raw(path: str) -> AsyncIterator[Connection]:
    """A framed connection with no client logic: we send whatever we like."""
    stream = await trio.open_unix_socket(path)
    async with open_connection(stream) as conn:
        yield conn


async def ask(conn: Connection, msg: dict[str, Any]) -> dict[str, Any]:
    """Send one message and return the next reply received (events are skipped)."""
    await conn.send(msg)
    with trio.fail_after(5):
        while "ev" in (reply := await conn.receive()):
            pass
        return reply


async def expect_closed(conn: Connection) -> None:
    """The server closes the connection (after at most its error reply)."""
    with trio.fail_after(5), pytest.raises(ConnectionClosed):
        while True:
            await conn.receive()


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


HELLO_MAPPER = {"op": "hello", "id": 0, "v": 1, "role": "mapper", "domid": 1}
HELLO_GUEST = {"op": "hello", "id": 0, "v": 1, "role": "guest", "domid": 1}


async def test_sockets_modes_ready_and_sigterm() -> None:
    with trio.fail_after(30):
        async with hv_process("--nr-gfns", "256", "--vcpus", "3") as hv:
            modes = {
                s: stat.S_IMODE(os.stat(hv.path(s)).st_mode) for s in ("privcmd.sock", "guest.sock")
            }
            assert modes == {"privcmd.sock": 0o600, "guest.sock": 0o660}
            assert stat.S_ISSOCK(os.stat(hv.path("guest.sock")).st_mode)
            async with open_unix_client(hv.path("privcmd.sock"), "control") as control:
                await control.hello()
                assert (await control.call("check"))["violations"] == []
            async with (
                open_unix_client(hv.path("guest.sock"), "guest") as guest,
                open_unix_client(hv.path("privcmd.sock"), "pager") as pager,
                trio.open_nursery() as n,
            ):
                info = await guest.hello(1)
                assert (info["nr_gfns"], info["vcpus"], info["ring_size"]) == (256, 3, 64)
                await pager.hello(1)
                await page_out(pager, [7])
                paused = spawn(n, guest, "read", vcpu=0, gfn=7, off=0, len=1)
                await next_event(pager, "mem_event")
                # SIGTERM with a pager attached and a vCPU paused: still a clean exit.
                hv.proc.send_signal(signal.SIGTERM)
                rc = await trio.to_thread.run_sync(hv.proc.wait, 10)
                assert rc == 0
                with pytest.raises(ConnectionClosed):
                    await guest.call("read", vcpu=1, gfn=1, off=0, len=1)
                await paused.done.wait()
                assert paused.reply is None and paused.lost is not None
            assert not await trio.Path(hv.path("privcmd.sock")).exists()
            assert not await trio.Path(hv.path("guest.sock")).exists()
            await trio.to_thread.run_sync(hv._reader.join, 10)
            events = hv.events()
            assert events.count("hv.ready") == 1 and "hv.stopped" in events
            assert not any("Traceback" in line for line in hv.lines)


async def test_sigint_is_a_clean_shutdown_too() -> None:
    with trio.fail_after(30):
        async with hv_process("--nr-gfns", "16") as hv:
            hv.proc.send_signal(signal.SIGINT)
            assert await trio.to_thread.run_sync(hv.proc.wait, 10) == 0
            assert not await trio.Path(hv.path("privcmd.sock")).exists()
            await trio.to_thread.run_sync(hv._reader.join, 10)
            assert not any("Traceback" in line for line in hv.lines)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--run-dir", "/tmp/x", "--nr-gfns", "zero"],
        ["--run-dir", "/tmp/x", "--nr-gfns", "0"],
        ["--run-dir", "/tmp/x", "--ring-size", "0"],
        ["--run-dir", "/tmp/x", "--ring-mode", "lazy"],
        ["--run-dir", "/tmp/x", "--nr-gfns", "8", "--mmio-gfns", "1,x"],
        ["--run-dir", "/tmp/x", "--nr-gfns", "8", "--mmio-gfns", "8"],
        ["--run-dir", "/tmp/x", "--nr-gfns", "8", "--host-frames", "4"],
        ["--run-dir", "/tmp/x", "--bogus"],
    ],
)
def test_bad_command_lines(args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hv", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


async def test_bad_input_over_real_sockets() -> None:
    with trio.fail_after(60):
        async with hv_process("--nr-gfns", "64", "--vcpus", "2", "--ring-size", "4") as hv:
            priv, guest_sock = hv.path("privcmd.sock"), hv.path("guest.sock")
            async with open_unix_client(priv, "pager") as first:
                await first.hello(1)
                await page_out(first, [1])
                await _bad_input(priv, guest_sock)
            assert hv.proc.poll() is None, "hv survived all of it"


async def _bad_input(priv: str, guest_sock: str) -> None:
    """Every kind of bad input gets its errno; only the offending connection closes."""
    # Framing errors: EPROTO (id null), then that connection alone is closed.
    for garbage in (
        b"\x00\x00\x00\x00",  # length 0
        struct.pack(">I", MAX_FRAME + 1),  # oversize length
        struct.pack(">I", 0xFFFFFFFF) + b"x" * 100,
        _frame(b"\xc1"),  # not msgpack
        _frame(msgpack.packb([1, 2, 3])),  # not a map
        _frame(msgpack.packb({1: "int key"})),
        _frame(msgpack.packb({"op": "hello"}) + b"\x01"),  # two values
        _frame(msgpack.packb({"op": "hello", "x": [[[[[[[[[[1]]]]]]]]]]})),  # too deep
        _frame(b"\x81\xa2op"),  # a map cut short inside the frame
        _frame(msgpack.packb({"op": "status", "id": 1})),  # not a hello first
    ):
        async with raw(priv) as conn:
            await conn.stream.send_all(garbage)
            with trio.fail_after(5):
                reply = await conn.receive()
            assert reply == {
                "id": None,
                "ok": False,
                "err": "EPROTO",
                "msg": reply["msg"],
            }, garbage
            await expect_closed(conn)
    # A frame cut off mid-body, then EOF.
    async with raw(priv) as conn:
        await conn.stream.send_all(struct.pack(">I", 100) + b"\x80" * 10)
        await conn.stream.send_eof()
        with trio.fail_after(5):
            reply = await conn.receive()
        assert reply["err"] == "EPROTO"
        await expect_closed(conn)
    # A bad version closes; a role not allowed on a socket closes with EPERM.
    async with raw(priv) as conn:
        assert (await ask(conn, {**HELLO_MAPPER, "v": 2}))["err"] == "EPROTO"
        await expect_closed(conn)
    async with raw(guest_sock) as conn:
        assert (await ask(conn, HELLO_MAPPER))["err"] == "EPERM"
        await expect_closed(conn)

    # Well-framed but wrong requests: an errno each, the connection stays open.
    async with raw(priv) as conn:
        assert (await ask(conn, {**HELLO_MAPPER, "domid": True}))["err"] == "EINVAL"
        assert (await ask(conn, {**HELLO_MAPPER, "domid": 99}))["err"] == "ESRCH"
        assert (await ask(conn, HELLO_MAPPER))["ok"]
        cases: list[tuple[dict[str, Any], Any]] = [
            ({"op": "map", "id": 1, "gfns": [True]}, "EINVAL"),
            ({"op": "map", "id": 2, "gfns": [-1]}, "EINVAL"),
            ({"op": "map", "id": 3, "gfns": list(range(256))}, "EINVAL"),
            ({"op": "map", "id": 4, "gfns": "1"}, "EINVAL"),
            ({"op": "map", "id": True, "gfns": [1]}, "EINVAL"),
            ({"op": "map", "id": -5, "gfns": [1]}, "EINVAL"),
            ({"op": 7, "id": 6}, "EINVAL"),
            ({"op": "frobnicate", "id": 7}, "ENOSYS"),
            ({"op": "nominate", "id": 8, "gfns": [1]}, "EPERM"),
            ({"op": "status", "id": 9}, "EPERM"),
            ({"op": "hello", "id": 10, "v": 1, "role": "mapper", "domid": 1}, "EINVAL"),
        ]
        for msg, err in cases:
            reply = await ask(conn, msg)
            assert (reply["ok"], reply.get("err")) == (False, err), msg
            rid = msg["id"] if isinstance(msg["id"], int) and msg["id"] >= 0 else None
            if isinstance(msg["id"], bool):
                rid = None
            assert reply["id"] == rid
        reply = await ask(conn, {"op": "map", "id": 11, "gfns": [2**64 - 1, 64, 0]})
        assert reply["pages"] == ["EINVAL", "EINVAL", bytes(4096)]
        reply = await ask(conn, {"op": "map", "id": 12, "gfns": [1], "extra": [1, {}]})
        assert reply["pages"] == ["ENOENT"]  # unknown keys ignored; gfn 1 is paged

    async with raw(guest_sock) as conn:
        assert (await ask(conn, HELLO_GUEST))["ok"]
        read = {"op": "read", "id": 1, "vcpu": 0, "gfn": 2, "off": 0, "len": 8}
        for change in (
            {"vcpu": 2},
            {"vcpu": -1},
            {"vcpu": 2**63},
            {"gfn": 64},
            {"gfn": 10**18},
            {"off": 4096},
            {"len": 0},
            {"off": 4000, "len": 100},
            {"len": 1.5},
            {"op": "write", "data": "text"},
            {"op": "write", "data": b""},
            {"op": "nominate", "gfns": [2]},
            {"op": "decrease_reservation", "gfns": [-3]},
        ):
            reply = await ask(conn, {**read, **change})
            want = "EPERM" if change.get("op") == "nominate" else "EINVAL"
            assert reply.get("err") == want, change
        assert (await ask(conn, read))["data"] == bytes(8)

    # A second pager is refused; its connection stays open for another hello.
    async with raw(priv) as conn:
        hello = {**HELLO_MAPPER, "role": "pager"}
        assert (await ask(conn, hello))["err"] == "EBUSY"
        assert (await ask(conn, hello))["err"] == "EBUSY"
    # Pager requests with bad fields, from a raw pager connection (takeover).
    async with raw(priv) as conn:
        hello = {**HELLO_MAPPER, "role": "pager", "takeover": True}
        assert (await ask(conn, hello))["epoch"] == 2
        for msg in (
            {"op": "prep", "id": 1, "gfns": [1, 2], "pages": [None]},
            {"op": "prep", "id": 2, "gfns": [1], "pages": [b"short"] * 256},
            {"op": "resume", "id": 3, "rsps": [{"seq": 1, "gfn": 1}]},
            {"op": "resume", "id": 4, "rsps": [{"seq": 0, "gfn": 1, "vcpu_id": 0, "flags": 1}]},
            {"op": "audit", "id": 5, "start": 0, "count": 524289},
            {"op": "audit", "id": 6, "start": 60, "count": 5},
            {"op": "accessed", "id": 7, "start": 2**40, "count": 1},
            {"op": "nominate", "id": 8, "gfns": list(range(65537))},
            {"op": "mark_broken", "id": 9, "gfns": [None]},
        ):
            reply = await ask(conn, msg)
            assert (reply["id"], reply.get("err")) == (msg["id"], "EINVAL"), msg
        reply = await ask(conn, {"op": "prep", "id": 10, "gfns": [1], "pages": [b"x"]})
        assert reply["results"] == ["EINVAL"]
        reply = await ask(conn, {"op": "nominate", "id": 11, "gfns": [2, 64, 2**63]})
        assert reply["results"] == [0, "EINVAL", "EINVAL"]
    # That pager's connection closed (a pager loss): a new one takes over.
    async with open_unix_client(priv, "pager") as pager:
        while True:  # hv may not have seen the close yet: retry EBUSY (§8)
            reply = await pager.request("hello", _id=0, v=1, role="pager", domid=1)
            if reply["ok"]:
                break
            assert reply["err"] == "EBUSY"
            await trio.sleep(0.01)
        # Everything the pager does still works, and no invariant broke.
        assert (await pager.call("evict", gfns=[2]))["results"] == [0]
        async with open_unix_client(priv, "control") as control:
            await control.hello()
            assert (await control.call("check"))["violations"] == []
            (dom,) = (await control.call("status"))["domains"]
            assert dom["pager"]["attached"] and dom["paged_pages"] == 2
            assert dom["pager"]["epoch"] == 3


async def test_pager_loss_and_reattach_over_sockets() -> None:
    with trio.fail_after(60):
        async with (
            hv_process("--nr-gfns", "64", "--vcpus", "2") as hv,
            open_unix_client(hv.path("guest.sock"), "guest") as guest,
            trio.open_nursery() as n,
        ):
            await guest.hello(1)
            await guest.call("write", vcpu=0, gfn=30, off=0, data=page(30))
            async with open_unix_client(hv.path("privcmd.sock"), "pager") as pager:
                await pager.hello(1)
                await page_out(pager, [30])
                access = spawn(n, guest, "read", vcpu=1, gfn=30, off=0, len=4096)
                (req,) = (await next_event(pager, "mem_event"))["reqs"]
                assert req["flags"] == MemEventFlag.VCPU_PAUSED
                # Drop the socket abruptly (no detach).
                pager.conn.stream.socket.close()
            async with open_unix_client(hv.path("privcmd.sock"), "pager") as pager2:
                # hv may not have seen the old connection close yet: retry EBUSY (§8).
                while True:
                    reply = await pager2.request("hello", _id=0, v=1, role="pager", domid=1)
                    if reply["ok"]:
                        break
                    assert reply["err"] == "EBUSY"
                    await trio.sleep(0.01)
                assert reply["epoch"] == 2
                assert (await next_event(pager2, "mem_event"))["reqs"] == [req]
                await pager2.call("prep", gfns=[30], pages=[page(30)])
                await pager2.call("resume", rsps=[rsp(req)])
                await access.done.wait()
                assert access.reply["data"] == page(30)
            # hv logged it before taking pager2's hello; the line may still be in the pipe.
            assert await trio.to_thread.run_sync(hv.wait_event, "pager.lost")


def test_run_dir_too_long_or_unusable(tmp_path: Path) -> None:
    long_dir = "/tmp/" + "x" * 120
    proc = subprocess.run(
        [sys.executable, "-m", "hv", "--run-dir", long_dir],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert proc.returncode == 2 and "too long" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    (tmp_path / "privcmd.sock").mkdir()  # the socket cannot be bound there
    proc = subprocess.run(
        [sys.executable, "-m", "hv", "--run-dir", str(tmp_path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("python -m hv: error:")
    assert "Traceback" not in proc.stderr
