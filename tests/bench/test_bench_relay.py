"""The relay floor (`stack.benchrelay`): caller -> relay -> backend -> relay -> caller, real
processes; it really forwards, forwards concurrently, matches replies by id, and leaves no
child behind."""

from __future__ import annotations

import os
import tempfile
from functools import partial
from typing import Any

import pytest
import trio

from protocol import PAGE_SIZE, VERSION, ok_reply
from stack.bench import table_rows
from stack.bench.populate import _parallel_echo
from stack.bench.procs import children_of
from stack.benchlib import round_trips
from stack.benchrelay import floor_process, open_relay
from transport import ConnectionClosed, open_connection, open_unix_client, serve_unix


def _children() -> list[int]:
    """Every child of this process, zombies too: a child not waited for is one."""
    return children_of(os.getpid())


async def test_a_read_goes_through_the_backend_and_back() -> None:
    with trio.fail_after(60):
        async with open_relay() as floor:
            assert floor.client.info["instance"] == "relay"  # the relay answers the hello
            assert set(floor.pids) == {"relay", "backend"}
            reply = await floor.client.call("read", vcpu=0, gfn=3, off=0, len=PAGE_SIZE)
            # Only the backend sets `backend`, to its pid: the read crossed both processes.
            assert reply["backend"] == floor.pids["backend"] != floor.pids["relay"]
            assert reply["data"] == bytes(PAGE_SIZE)

            # 16 callers at once on one connection, each read of its own length: every
            # reply comes back to its own request.
            async def caller(v: int) -> None:
                for i in range(20):
                    n = 1 + (v * 20 + i) % PAGE_SIZE
                    r = await floor.client.call("read", vcpu=v, gfn=0, off=0, len=n)
                    assert len(r["data"]) == n and r["backend"] == floor.pids["backend"]

            async with trio.open_nursery() as nursery:
                for v in range(16):
                    nursery.start_soon(caller, v)
            assert min(await round_trips(floor.client, 20, PAGE_SIZE)) > 0
            rate, n = await _parallel_echo(floor.client, 200, 4)
            assert rate > 0 and n == 200
    assert not _children()  # relay and backend stopped and reaped


async def test_the_relay_forwards_a_second_request_before_the_first_reply() -> None:
    """A backend of the test's own holds every reply until two reads have come: a relay
    that waited for a reply before forwarding the next request would never get them out.
    It then answers in reverse order, which the relay must match back by id."""
    got: list[dict[str, Any]] = []
    first_in = trio.Event()

    async def backend(stream: trio.SocketStream) -> None:
        async with open_connection(stream) as conn:
            hello = await conn.receive()
            conn.send_nowait(
                ok_reply(hello["id"], v=VERSION, domid=1, nr_gfns=1, vcpus=1, page_size=PAGE_SIZE)
                | {"ring_size": 0, "instance": "test"}
            )
            while len(got) < 2:
                got.append(await conn.receive())
                first_in.set()
            for req in reversed(got):
                conn.send_nowait(ok_reply(req["id"], data=bytes(req["len"]), backend="test"))
            with pytest.raises(ConnectionClosed):
                await conn.receive()

    with tempfile.TemporaryDirectory(prefix="xpemu-relay-test-") as tmp:
        backend_path, relay_path = os.path.join(tmp, "b.sock"), os.path.join(tmp, "r.sock")
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(serve_unix, backend_path, backend, mode=0o600))
                async with (
                    floor_process(["--relay", relay_path, backend_path]),
                    open_unix_client(relay_path, "guest") as client,
                ):
                    await client.hello(1)
                    replies: dict[int, dict[str, Any]] = {}

                    async def read(n: int) -> None:
                        replies[n] = await client.call("read", vcpu=n, gfn=0, off=0, len=n)

                    async with trio.open_nursery() as callers:
                        callers.start_soon(read, 100)
                        await first_in.wait()  # the second read is not in the first's burst
                        callers.start_soon(read, 200)
                nursery.cancel_scope.cancel()
    assert {n: len(r["data"]) for n, r in replies.items()} == {100: 100, 200: 200}
    assert all(r["backend"] == "test" for r in replies.values())
    assert sorted(r["len"] for r in got) == [100, 200]
    assert len({r["id"] for r in got}) == 2  # the relay's own ids
    assert not _children()


async def test_processes_are_reaped_when_the_block_fails() -> None:
    with trio.fail_after(60):
        with pytest.raises(ZeroDivisionError):
            async with open_relay() as floor:
                assert all(pid in _children() for pid in floor.pids.values())
                1 / 0  # noqa: B018  # the block fails
    assert not _children()


async def test_the_relay_ends_when_its_backend_is_gone() -> None:
    with tempfile.TemporaryDirectory(prefix="xpemu-relay-test-") as tmp:
        backend_path, relay_path = os.path.join(tmp, "b.sock"), os.path.join(tmp, "r.sock")
        with trio.fail_after(60):
            async with (
                floor_process(["--backend", backend_path]) as backend,
                floor_process(["--relay", relay_path, backend_path]) as relay,
            ):
                backend.terminate()
                assert await relay.wait() == 0  # by itself, not by the block's SIGTERM
    assert not _children()


def _mode_with_relay() -> dict[str, Any]:
    return {
        "latency": {
            "p50_us": 600.0,
            "p99_us": 900.0,
            "floor_p50_us": 200.0,
            "floor_p99_us": 300.0,
            "relay_p50_us": 400.0,
            "relay_p99_us": 450.0,
        },
        "vcpus": {
            16: {
                "pageins_per_s": 5000.0,
                "echo_per_s": 20000.0,
                "relay_per_s": 8000.0,
                "cpu_us_hv": 100.0,
                "cpu_us_pager": 150.0,
                "cpu_us_guest": 50.0,
                "echo_cpu_us_echo": 20.0,
                "echo_cpu_us_guest": 30.0,
                "relay_cpu_us_relay": 40.0,
                "relay_cpu_us_backend": 20.0,
                "relay_cpu_us_guest": 40.0,
            }
        },
    }


def test_table_puts_the_relay_beside_the_echo() -> None:
    res = {
        "populate": {"modes": {"reattach": _mode_with_relay()}},
        "machine": {},
    }
    rows = table_rows(res)
    names = [r[0] for r in rows]
    by_name = {r[0]: r[1:] for r in rows}
    # The echo's rows as before, the relay's under each.
    assert by_name["populate p50, 1 vCPU, reattach"] == ("600 µs", "200 µs (beside)", "3.00x")
    at = names.index("populate p50, 1 vCPU, reattach")
    assert rows[at + 1] == (
        "  vs relay p50 (4 messages)",
        "600 µs",
        "400 µs relay = 2.00x echo",
        "1.50x",
    )
    at = names.index("page-ins/s, 16 vCPUs, reattach")
    assert rows[at][1:] == ("5000/s", "20000 echo/s, 16 callers", "0.25x")
    assert rows[at + 1] == (
        "  vs relay (4 messages)",
        "5000/s",
        "8000 relay/s = 0.40x echo",
        "0.62x",
    )
    assert rows[at + 2][1:] == ("300 µs (100+150+50)", "50 µs/rt (20+30)", "6.00x")
    assert rows[at + 3] == (
        "  vs relay CPU/rt (relay+backend+caller)",
        "300 µs",
        "100 µs/rt (40+20+40)",
        "3.00x",
    )
