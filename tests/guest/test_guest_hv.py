"""The guest against the real hv (and the real pager), all in one trio run over Unix
socket pairs (the transport's direct-write and corking paths, as between processes): pages
really move out and in while the vCPUs check every byte."""

from __future__ import annotations

from pathlib import Path

import trio

from guest import GfnState, GuestConfig, Shadow, run_workload, verify_all
from hv import HvConfig, Hypervisor
from pager import PagerConfig, RealDisk, open_store, run_pager
from transport import open_client


def _socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


def _counters(hv: Hypervisor) -> dict[str, int]:
    return hv.counters()["domains"][0]["counters"]


def _moved(hv: Hypervisor) -> dict[str, int]:
    """hv's cumulative counts of pages evicted, populated and prepped."""
    c = _counters(hv)
    return {k: c.get(k, 0) for k in ("page.evicted", "page.populated", "page.prepped")}


async def _guest(
    hv: Hypervisor, nursery: trio.Nursery, config: GuestConfig, shadow: Shadow | None = None
):
    a, b = _socket_pair()
    nursery.start_soon(hv.serve_stream, b, "guest.sock")
    async with open_client(a, "guest") as client:
        await client.hello(1)
        if config.duration == 0 and shadow is not None:
            return await verify_all(client, shadow, stuck_after=config.stuck_after)
        return await run_workload(client, config, shadow=shadow)


async def test_guest_alone_on_real_hv_balloons_and_verifies() -> None:
    """No pager, no paging: reads, writes and balloon rounds against hv's real p2m."""
    hv = Hypervisor(HvConfig(nr_gfns=128, vcpus=4))
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                config = GuestConfig(
                    seed=11, duration=1.5, pattern="uniform", balloon_every=0.1, balloon_count=3
                )
                report = await _guest(hv, nursery, config)
                nursery.cancel_scope.cancel()
        assert report.ok, report.summary()
        assert report.balloon_out > 0 and report.balloon_in == report.balloon_out
        assert report.efault_checks > 0  # ballooned-out gfns really answered EFAULT
        assert report.verified == 128 and report.writes > 0
        c = _counters(hv)
        assert c["page.ballooned_out"] == report.balloon_out
        assert hv.check() == []
    finally:
        hv.close()


async def test_guest_with_real_pager_pages_move_and_bytes_survive(tmp_path: Path) -> None:
    """hv target below the guest's size: the pager pages out, guest touches page back in."""
    hv = Hypervisor(HvConfig(nr_gfns=256, vcpus=4, target=96))
    shadow = Shadow(256, seed=12)
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                pa, pb = _socket_pair()
                nursery.start_soon(hv.serve_stream, pb, "privcmd.sock")
                stop = trio.Event()
                done = trio.Event()

                async def pager() -> None:
                    store = await open_store(RealDisk(tmp_path / "state"), lock_timeout=1.0)
                    await run_pager(pa, store, PagerConfig(), stop=stop)
                    done.set()

                nursery.start_soon(pager)
                # Zipf, not uniform: a guest that writes every gfn at full speed (in-process,
                # nothing slows it) writes each nominated page before a slow disk makes its
                # copy durable, and every evict is refused (EVICT_FAIL) — correct, but then
                # nothing moves. A skewed guest leaves cold pages for the pager, as real ones do.
                config = GuestConfig(
                    seed=12, duration=3.0, pattern="zipf", balloon_every=0.3, stuck_after=20
                )
                # Rounds of 3 s until hv's counters show pages moved both ways: how soon the
                # first batch is durable depends on the disk (a busy machine's fsync can take
                # seconds), and the test is about bytes surviving, not about speed.
                faults_seen = 0
                for _ in range(10):
                    report = await _guest(hv, nursery, config, shadow)
                    assert report.ok, report.summary()
                    faults_seen += report.faults_seen
                    if all(_moved(hv).values()):
                        break
                stop.set()  # the pager pages everything back in and detaches
                await done.wait()
                again = await _guest(hv, nursery, GuestConfig(seed=12, duration=0), shadow)
                nursery.cancel_scope.cancel()
        # hv's cumulative counters prove that pages moved; paged_pages at one instant does
        # not (the guest's final pass reads every gfn, which pages them all back in).
        moved = _moved(hv)
        assert all(moved.values()), moved
        assert faults_seen > 0 and report.verified == 256
        assert again.ok and again.verified == 256
        assert hv.status()["domains"][0]["paged_pages"] == 0
        assert shadow.states.count(GfnState.DATA) > 0
        assert hv.check() == []
    finally:
        hv.close()


async def test_verify_catches_a_page_changed_behind_the_guests_back() -> None:
    """Write through one connection, change the page through hv directly: verify fails."""
    hv = Hypervisor(HvConfig(nr_gfns=16, vcpus=2))
    shadow = Shadow(16, seed=13)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                config = GuestConfig(seed=13, ops=200, duration=None, balloon_every=0)
                first = await _guest(hv, nursery, config, shadow)
                assert first.ok
                victim = next(g for g in range(16) if shadow.states[g] == GfnState.DATA)
                a, b = _socket_pair()
                nursery.start_soon(hv.serve_stream, b, "guest.sock")
                async with open_client(a, "guest") as client:
                    await client.hello(1)
                    await client.call("write", vcpu=0, gfn=victim, off=100, data=b"\xff" * 8)
                again = await _guest(hv, nursery, GuestConfig(seed=13, duration=0), shadow)
                nursery.cancel_scope.cancel()
        assert again.integrity_errors == 1 and not again.ok
        assert again.error_details[0]["gfn"] == victim
    finally:
        hv.close()
