"""Stack building blocks: the seeded schedule, frame tracking, the cutting proxy."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from pager.faults import parse_faults
from protocol import encode_frame
from stack import FaultProxy, FrameTracker, make_schedule, parse_kinds
from stack.schedule import DEFAULT_KINDS
from stack.supervisor import PagerLife
from transport import serve_unix


def test_same_seed_same_schedule_and_another_seed_differs() -> None:
    a = make_schedule(42, 30.0, count=20)
    b = make_schedule(42, 30.0, count=20)
    c = make_schedule(43, 30.0, count=20)
    assert a == b
    assert a != c
    assert len(a) == 20
    times = [f.at for f in a]
    assert times == sorted(times) and 1.0 <= times[0] and times[-1] <= 28.0
    # Spread out: each fault sits in its own share of the window.
    share = 27.0 / 20
    assert all(1.0 + i * share <= t <= 1.0 + (i + 1) * share for i, t in enumerate(times))


def test_every_pager_side_fault_is_a_spec_the_pager_accepts() -> None:
    schedule = make_schedule(7, 200.0, count=150)
    kinds = {f.kind for f in schedule}
    assert kinds == set(DEFAULT_KINDS)
    for fault in schedule:
        if fault.spec is not None:
            faults = parse_faults(fault.spec)
            assert faults.armed, fault.spec
        if fault.kind == "store" and fault.params["op"] == "read":
            assert not fault.spec.endswith("+")  # read faults are transient
        if fault.kind == "cut":
            assert 0 <= fault.params["fraction"] <= 1


def test_kinds_and_bad_schedules() -> None:
    only_kills = make_schedule(1, 20.0, count=10, kinds=parse_kinds("kill"))
    assert {f.kind for f in only_kills} == {"kill"}
    assert parse_kinds("kill=3,crash=0") == {"kill": 3, "crash": 0}
    for bad in ("nope", "kill=x", "kill=-1", ""):
        with pytest.raises(ValueError):
            parse_kinds(bad)
    with pytest.raises(ValueError):
        make_schedule(1, 2.0, count=3)  # no room
    assert make_schedule(1, 2.0, count=0) == []


def test_pager_life_causes() -> None:
    life = PagerLife(1, 100, 0.0, spec="after_write@1", fault_kind="crash")
    assert life.cause == "running"
    life.rc = -9
    assert life.cause == "crash_point"
    life.killed_by = "kill"
    assert life.cause == "sigkill:kill"
    plain = PagerLife(2, 101, 0.0, rc=75)
    assert plain.cause == "exit:75"


@given(st.lists(st.integers(1, 3000), min_size=1, max_size=8), st.integers(0, 2**32 - 1))
def test_frame_tracker_finds_every_frame_across_any_chunking(sizes: list[int], seed: int) -> None:
    stream = b"".join(struct.pack(">I", n) + bytes(n) for n in sizes)
    rng = random.Random(seed)
    tracker = FrameTracker()
    found = []
    i = 0
    while i < len(stream):
        step = rng.randint(1, 700)
        found += tracker.feed(stream[i : i + step])
        i += step
    starts, pos = [], 0
    for n in sizes:
        starts.append((pos, 4 + n))
        pos += 4 + n
    assert found == starts


async def _proxy_cut(tmp_path: Path, direction: str, fraction: float) -> tuple[bytes, bytes]:
    """Relay three frames each way through the proxy with a cut armed before the second;
    what the upstream (hv side) and the downstream (pager side) received."""
    upstream_path = str(tmp_path / "up.sock")
    proxy_path = str(tmp_path / "proxy.sock")
    got_up = bytearray()
    frames = [encode_frame({"op": "x", "id": i, "pad": "a" * 300}) for i in range(3)]
    up_ready = trio.Event()
    up_stream: list[trio.SocketStream] = []

    async def upstream(stream: trio.SocketStream) -> None:
        up_stream.append(stream)
        up_ready.set()
        while data := await stream.receive_some(65536):
            got_up.extend(data)

    proxy = FaultProxy(upstream_path)
    got_down = bytearray()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve_unix(
                    upstream_path, upstream, mode=0o600, task_status=task_status
                )
            )
            await nursery.start(proxy.serve, proxy_path)
            client = await trio.open_unix_socket(proxy_path)
            await client.send_all(frames[0])
            await up_ready.wait()
            await up_stream[0].send_all(frames[0])
            while len(got_down) < len(frames[0]):
                got_down.extend(await client.receive_some(65536))
            proxy.arm_cut(direction, fraction)
            try:
                if direction == "to_hv":
                    await client.send_all(frames[1] + frames[2])
                else:
                    await up_stream[0].send_all(frames[1] + frames[2])
            except trio.BrokenResourceError:
                pass
            while data := await client.receive_some(65536):
                got_down.extend(data)
            await client.aclose()
            nursery.cancel_scope.cancel()
    assert proxy.cuts and not proxy.armed
    return bytes(got_up), bytes(got_down)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
async def test_proxy_cuts_to_hv_strictly_inside_a_frame(tmp_path: Path, fraction: float) -> None:
    frame = encode_frame({"op": "x", "id": 1, "pad": "a" * 300})
    got_up, _ = await _proxy_cut(tmp_path, "to_hv", fraction)
    first = encode_frame({"op": "x", "id": 0, "pad": "a" * 300})
    assert got_up.startswith(first)
    partial = got_up[len(first) :]
    assert 1 <= len(partial) <= len(frame) - 1  # a torn frame, then EOF
    assert frame.startswith(partial)


async def test_proxy_cuts_to_pager_strictly_inside_a_frame(tmp_path: Path) -> None:
    frame = encode_frame({"op": "x", "id": 1, "pad": "a" * 300})
    _, got_down = await _proxy_cut(tmp_path, "to_pager", 0.3)
    first = encode_frame({"op": "x", "id": 0, "pad": "a" * 300})
    partial = got_down[len(first) :]
    assert 1 <= len(partial) <= len(frame) - 1
    assert frame.startswith(partial)


def _make_store(state: Path, rows: dict[int, bytes]) -> None:
    """A store in the pager's format, written by the pager's store code."""
    from pager import PageStore, RealDisk, Row, checksum

    async def write() -> None:
        store = await PageStore.open(RealDisk(state), lock_wait=1)
        slots = store.reserve(len(rows))
        items = sorted(rows.items())
        await store.persist(
            [Row(g, 7, s, checksum(g, 7, d)) for (g, d), s in zip(items, slots, strict=True)],
            [d for _, d in items],
        )
        await store.close()

    trio.run(write)


def test_store_check_finds_missing_corrupt_and_stale_rows(tmp_path: Path) -> None:
    from protocol import P2MType, pack_bits
    from stack.store_check import check_store

    # gfns 0-1 resident, 2-4 paged (no frame), 5 paging_in_start without frame.
    types = bytes(
        [
            P2MType.ram_rw,
            P2MType.ram_rw,
            P2MType.paged,
            P2MType.paged,
            P2MType.paged,
            P2MType.paging_in_start,
        ]
    )
    frames = pack_bits(bytes([1, 1, 0, 0, 0, 0]))
    state = tmp_path / "state"
    _make_store(state, {1: b"\x01" * 4096, 2: b"\x02" * 4096, 3: b"\x03" * 4096, 5: b"\x05" * 4096})
    from pager.store import PAGES
    from pager.store_format import slot_offset

    with open(state / PAGES, "r+b") as f:  # flip one byte of gfn 3's slot (slot 2)
        f.seek(slot_offset(2) + 10)
        f.write(b"\xff")
    result = check_store(state, types, frames)
    assert result.rows == 4 and result.frameless == 4
    assert result.missing == [4]
    assert result.bad_checksum == [3]
    assert result.resident_rows == [1]
    assert len(result.violations(resident_rows_allowed=True)) == 2
    assert len(result.violations(resident_rows_allowed=False)) == 3
