"""Simulated links carry bytes like a socket, and a cut breaks a frame off in its middle."""

from __future__ import annotations

import pytest
import trio

from protocol import CLOSED, NEED_DATA, FrameDecoder, encode_frame
from sim.net import Link
from transport import ConnectionClosed, open_client, open_connection


async def test_bytes_flow_both_ways_and_close_is_eof() -> None:
    client, server = Link("l").ends
    await client.send_all(b"abc")
    await client.send_all(b"def")
    assert await server.receive_some(4) == b"abcd"
    assert await server.receive_some() == b"ef"
    await server.send_all(b"back")
    assert await client.receive_some(100) == b"back"
    await client.aclose()
    assert await server.receive_some(10) == b""
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"x")


async def test_cut_breaks_a_frame_in_the_middle() -> None:
    link = Link("l")
    client, server = link.ends
    first, second = encode_frame({"a": 1}), encode_frame({"b": b"x" * 100})
    await client.send_all(first)
    link.cut_next("to_server", 0.5)
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(second)
    got = await server.receive_some(1000)
    assert got == first + second[: len(second) // 2]
    assert await server.receive_some(1000) == b""
    decoder = FrameDecoder()
    decoder.receive_data(got)
    assert decoder.next_message() == {"a": 1}
    assert decoder.next_message() is NEED_DATA
    decoder.receive_data(b"")
    with pytest.raises(Exception):  # noqa: B017 - the decoder reports a truncated frame
        assert decoder.next_message() is not CLOSED
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"x")  # both ways are gone
    assert link.cut


async def test_a_cut_connection_ends_the_client_with_connection_closed() -> None:
    link = Link("l")
    client_end, server_end = link.ends
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def echo_server() -> None:
                async with open_connection(server_end) as conn:
                    while True:
                        try:
                            msg = await conn.receive()
                        except ConnectionClosed:
                            return
                        await conn.send({"id": msg["id"], "ok": True, "v": 2})

            nursery.start_soon(echo_server)
            async with open_client(client_end, "control") as client:
                link.cut_next("to_client", 0.3)
                with pytest.raises(ConnectionClosed):
                    await client.request("status")


async def test_latency_delays_arrival_in_trio_time(autojump_clock: trio.testing.MockClock) -> None:
    client, server = Link("l", latency=0.25).ends
    t0 = trio.current_time()
    await client.send_all(b"a")
    await client.send_all(b"b")
    assert await server.receive_some(10) == b"ab"
    assert trio.current_time() - t0 == pytest.approx(0.25)
    await client.aclose()
    assert await server.receive_some(10) == b""


async def test_an_idle_connection_writes_straight_into_the_link() -> None:
    # As into a socket's buffer: the frame is on the link before any checkpoint, with no
    # writer task in between (one scheduler pass less per frame).
    link = Link("l")
    client, server = link.ends
    frame = encode_frame({"a": 1})
    async with open_connection(client) as conn:
        conn.send_nowait({"a": 1})
        assert link.bytes_sent["to_server"] == len(frame)
        assert await server.receive_some(100) == frame


async def test_a_cut_inside_a_direct_write_breaks_the_frame_and_the_connection() -> None:
    link = Link("l")
    client, server = link.ends
    frame = encode_frame({"b": b"x" * 100})
    with trio.fail_after(5):
        async with open_connection(client) as conn:
            link.cut_next("to_server", 0.5)
            conn.send_nowait({"b": b"x" * 100})  # half goes now, the rest to the writer
            assert link.cut
            assert await server.receive_some(1000) == frame[: len(frame) // 2]
            assert await server.receive_some(1000) == b""
            await trio.testing.wait_all_tasks_blocked()  # the writer met the broken link
            assert conn.closed
            with pytest.raises(ConnectionClosed):
                conn.send_nowait({"c": 1})
    assert client.try_send_some(b"late") == 0
