"""The fault player: each fault of a plan applied to the world at its instant.

Faults that last (a disk misbehaving, a foreign mapping, a second domain hogging frames)
run in the player's own nursery, so the fault window ends only when they do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from protocol import Errno
from transport import open_client

from .disk import DiskFaults
from .plan import SimFault
from .trace import as_proc

if TYPE_CHECKING:
    from .world import World


class FaultPlayer:
    """Plays `world.plan`'s faults."""

    def __init__(self, world: World) -> None:
        self.w = world
        self.disk_windows: list[tuple[float, DiskFaults]] = []
        self.effects: trio.Nursery | None = None

    async def play(self, t0: float) -> None:
        """Fire each fault of the plan at its instant."""
        # Faults that last (a mapping, a frame hog) run here: the window ends with them.
        async with trio.open_nursery() as self.effects:
            for fault in self.w.plan.faults:
                await trio.sleep_until(t0 + fault.at)
                self.w.emit("sim.fault", kind=fault.kind, **dict(fault.params))
                self.w.result.fired[fault.kind] += 1
                await self.fire(fault)
        while self.disk_windows:
            await trio.sleep_until(self.disk_windows[0][0])
            self._expire_disk_windows()

    async def fire(self, fault: SimFault) -> None:
        """Apply one fault."""
        p = fault.params
        kind = fault.kind
        self._expire_disk_windows()
        if kind == "kill":
            self.w.kill()
        elif kind == "crash":
            self.w.armed = f"{p['point']}@{p['nth']}"
            self.w.kill()
        elif kind == "store":
            persist = "" if p["op"] == "read" else "+"
            self.w.armed = f"store.{p['op']}={p['action']}@{p['nth']}{persist}"
            self.w.kill()
        elif kind == "power" and "point" in p:
            self.w.armed = f"{p['point']}@{p['nth']}"
            self.w.node.power_at_crash = p.get("mode", "drop")
            self.w.kill()
        elif kind == "power":
            self.w.kill()
            self.w.node.power_loss(p.get("mode", "drop"))
        elif kind == "disk":
            until = trio.current_time() + float(p["for_s"])
            rates: dict[str, Any] = {p["fault"]: float(p["rate"])}
            self.disk_windows.append((until, DiskFaults(**rates)))
            self.disk_windows.sort(key=lambda w: w[0])
            self._apply_disk_windows()
        elif kind == "cut":
            if self.w.link is not None:
                self.w.link.cut_next(p["direction"], float(p["fraction"]))
        elif kind == "target":
            assert self.w.control is not None
            await self.w.control.call("set_target", domid=1, tot_pages=int(p["tot_pages"]))
        elif kind == "foreign":
            self._effects().start_soon(
                as_proc, "mapper", self.foreign, int(p["count"]), float(p["for_s"])
            )
        elif kind == "enomem":
            self._effects().start_soon(as_proc, "sim", self.enomem, float(p["for_s"]))

    def _expire_disk_windows(self) -> None:
        now = trio.current_time()
        if self.disk_windows and self.disk_windows[0][0] <= now:
            self.disk_windows = [w for w in self.disk_windows if w[0] > now]
            self._apply_disk_windows()

    def _apply_disk_windows(self) -> None:
        merged: dict[str, Any] = {}
        for _, faults in self.disk_windows:
            for name in DiskFaults.__dataclass_fields__:
                value = getattr(faults, name)
                if isinstance(value, float) and value and name != "slow_sync_s":
                    merged[name] = max(merged.get(name, 0.0), value)
        self.w.node.set_disk_faults(DiskFaults(**merged))

    async def foreign(self, count: int, hold_s: float) -> None:
        """A foreign mapper holds `count` gfns for `hold_s` seconds (paged ones populate)."""
        link = self.w.connect(self.w.nursery, "privcmd.sock", "mapper")
        gfns = sorted({self.w.rng.randrange(self.w.sc.nr_gfns) for _ in range(count)})
        async with open_client(link.ends[0], "mapper") as mapper:
            await mapper.hello(1)
            deadline = trio.current_time() + hold_s
            held: list[int] = []
            while gfns and trio.current_time() < deadline:
                reply = await mapper.call("map", gfns=gfns, hold=True)
                held += [
                    g for g, r in zip(gfns, reply["pages"], strict=True) if isinstance(r, bytes)
                ]
                gfns = [g for g, r in zip(gfns, reply["pages"], strict=True) if r == Errno.ENOENT]
                if gfns:
                    await trio.sleep(hold_s / 10)
            await trio.sleep_until(deadline)
            if held:
                await mapper.call("unmap", gfns=held)

    async def enomem(self, hold_s: float) -> None:
        """A second domain takes every free host frame for `hold_s` seconds."""
        assert self.w.control is not None
        free = self.w.hv.pool.free
        if free < 1:
            return
        reply = await self.w.control.request("domain_create", nr_gfns=free, vcpus=1, mmio_gfns=[])
        if not reply["ok"]:  # frames moved while the request travelled: no hog this time
            self.w.emit("sim.enomem_skipped", err=reply["err"])
            return
        await trio.sleep(hold_s)
        await self.w.control.call("domain_destroy", domid=reply["domid"])

    # ------------------------------------------------------------------ checks

    def _effects(self) -> trio.Nursery:
        assert self.effects is not None, "faults fire only from play()"
        return self.effects


__all__ = ["FaultPlayer"]
