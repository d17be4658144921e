"""The checks of a run once its faults stopped (SIM.md "What every run checks").

Safety: every read returned the last bytes written (the guest's own checks and its verify
pass over every gfn); the store holds exactly one valid copy of every frameless gfn;
hv's `check`; hv's memory against the guest's shadow once everything is paged in.
Liveness: raising the target pages everything back in within a bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import trio

from guest import GfnState, Shadow
from hv import NO_FRAME
from protocol import PAGING_TYPES, P2MType

if TYPE_CHECKING:
    from .world import World

#: Disk faults that destroy a copy for good: a page lost to them (EIO) is an honest outcome.
#: Not their only possible outcome: a misdirected (or lost) header page write leaves the
#: page's previous records on the media, and a record of an older generation whose slot
#: still holds its bytes would be served after a restart (wrong bytes) were the store not
#: to read each phase's header pages back from the media after its sync (pager/store.py).
#: Wrong reads stay a failure, with or without media faults. Not `eio_read`: a read that
#: fails for a while destroys nothing, and the pager reads again (a slot at a page-in, a
#: header page at the store's open), so a page lost to it alone is a failure.
MEDIA_FAULTS: Final = ("latent", "misdirect")


def guest_problems(r: dict[str, Any], *, losses_allowed: bool) -> list[str]:
    """What is wrong in a guest report: wrong bytes always; lost pages (EIO) unless the
    plan destroyed copies on the media; stuck vCPUs; unexpected errors."""
    out = []
    wrong = r["integrity_errors"] - len(r["lost_gfns"])
    if wrong > 0:
        details = [d for d in r.get("error_details", []) if "EIO" not in str(d.get("what"))]
        out.append(f"{wrong} wrong reads" + (f" (first: {details[0]})" if details else ""))
    if r["lost_gfns"] and not losses_allowed:
        out.append(f"lost gfns {r['lost_gfns'][:5]} ({len(r['lost_gfns'])} in all)")
    if r["stuck_vcpus"]:
        out.append(f"stuck vCPUs {r['stuck_vcpus']}")
    if r["unexpected_errors"]:
        out.append(f"unexpected errors {r['unexpected_errors']}")
    if r["unverified"]:
        out.append(f"{r['unverified']} gfns unverified")
    if r["aborted"]:
        out.append(f"aborted: {r['aborted']}")
    return out


async def watch(done: Callable[[], bool], every: float) -> None:
    """Look at in-process state every `every` simulated seconds until `done()`: the sim
    observes hv from outside, as a monitor samples a machine (hv has no event for it)."""
    while True:
        if done():
            return
        await trio.sleep(every)


class Checks:
    """The end-of-run checks of one world."""

    def __init__(self, world: World) -> None:
        self.w = world
        self.media_lost: set[int] = set()  # frameless gfns whose copy a media fault destroyed

    async def check_store(self) -> None:
        """Invariant 4 with the pager dead (its store must hold as it left it) and no
        next pager started until the check is done."""
        self.w.restart_hold = hold = trio.Event()
        self.w.kill()
        with trio.move_on_after(self.w.sc.liveness_s):
            await watch(lambda: self.w.life_scope is None, 0.001)
        try:
            domain = self.w.hv.domains[1]
            audit = domain.audit(0, domain.nr_gfns)
            missing, unreadable = await self.w.node.check_store(audit["types"], audit["frames"])
        finally:
            self.w.restart_hold = None
            hold.set()
        problems: list[str] = []
        if self.w.losses_allowed:  # the media destroyed these copies: an honest loss
            self.media_lost = missing | unreadable
        else:
            problems += [f"gfn {g}: no store row for a frameless gfn" for g in sorted(missing)]
            problems += [f"gfn {g}: its copy does not verify" for g in sorted(unreadable)]
        self.w.emit("check.store", violations=len(problems))
        if problems:
            self.w.result.failures.append(f"store: {problems[0]} ({len(problems)} in all)")

    async def check_liveness(self, shadow: Shadow) -> None:
        """Raising the target pages everything in, and every gfn reads back right."""
        assert self.w.control is not None
        domain = self.w.hv.domains[1]
        await self.w.control.call("set_target", domid=1, tot_pages=domain.nr_gfns)
        t0 = trio.current_time()

        def paged() -> int:  # gfns still paged, but for those whose copy the media lost
            if not self.media_lost:
                return int(domain.p2m.paged_pages)
            p2m = domain.p2m
            lost = sum(
                1
                for g in self.media_lost
                if p2m.frames[g] == NO_FRAME and p2m.type(g) in PAGING_TYPES
            )
            return int(domain.p2m.paged_pages) - lost

        with trio.move_on_after(self.w.sc.liveness_s):
            await watch(lambda: not (paged() or domain.ring.used or domain.pager is None), 0.01)
        waited = trio.current_time() - t0
        self.w.emit("check.pagein", waited=round(waited, 6), paged=domain.p2m.paged_pages)
        if paged() or domain.ring.used:
            self.w.result.failures.append(
                f"liveness: {paged()} gfns still paged, {domain.ring.used} "
                f"requests unanswered {self.w.sc.liveness_s:g} s after the faults stopped"
            )
        problems = memory_problems(domain, shadow, losses_allowed=self.w.losses_allowed)
        self.w.emit("check.memory", problems=len(problems))
        if problems:
            self.w.result.failures.append(f"memory: {problems[0]} ({len(problems)} in all)")


def memory_problems(domain: Any, shadow: Shadow, *, losses_allowed: bool) -> list[str]:
    """Every gfn of hv's memory against the guest's shadow, read in-process (everything
    is paged in by now: a guest read of a resident gfn is exactly this read of its frame).
    The guest's own verify pass already read every gfn through the page-in path."""
    out = []
    p2m, pool = domain.p2m, domain.pool
    for gfn in range(domain.nr_gfns):
        state = shadow.states[gfn]
        if state == GfnState.LOST:
            if not losses_allowed:
                out.append(f"gfn {gfn} was lost (broken)")
            continue
        if state == GfnState.INVALID:
            if p2m.type(gfn) != P2MType.invalid:
                out.append(f"gfn {gfn} is ballooned out but {p2m.type(gfn).name}")
            continue
        frame = p2m.frames[gfn]
        if frame == NO_FRAME:
            continue  # still paged: the liveness check said so
        if pool.read(frame) != shadow.expected(gfn):
            out.append(f"gfn {gfn} holds wrong bytes ({p2m.type(gfn).name})")
    return out


__all__ = ["MEDIA_FAULTS", "Checks", "guest_problems", "memory_problems", "watch"]
