"""The checks of a run once its faults stopped (SIM.md "What every run checks").

Safety: every read returned the last bytes written (the guest's own checks, and a final
verify of every gfn); the store holds exactly one valid copy of every frameless gfn;
hv's `check`. Liveness: raising the target pages everything back in within a bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import trio

from guest import Shadow, verify_all
from transport import Client

from .trace import as_proc

if TYPE_CHECKING:
    from .world import World

#: Disk faults that destroy a copy for good: a page lost to them (EIO) is an honest outcome.
MEDIA_FAULTS: Final = ("latent", "misdirect", "eio_read")


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
            problems = await self.w.node.check_store(audit["types"], audit["frames"])
        finally:
            self.w.restart_hold = None
            hold.set()
        self.w.emit("check.store", violations=len(problems))
        if problems:
            self.w.result.failures.append(f"store: {problems[0]} ({len(problems)} in all)")

    async def check_liveness(self, guest: Client, shadow: Shadow) -> None:
        """Raising the target pages everything in, and every gfn reads back right."""
        assert self.w.control is not None
        domain = self.w.hv.domains[1]
        await self.w.control.call("set_target", domid=1, tot_pages=domain.nr_gfns)
        t0 = trio.current_time()
        with trio.move_on_after(self.w.sc.liveness_s):
            await watch(
                lambda: not (domain.p2m.paged_pages or domain.ring.used or domain.pager is None),
                0.01,
            )
        waited = trio.current_time() - t0
        self.w.emit("check.pagein", waited=round(waited, 6), paged=domain.p2m.paged_pages)
        if domain.p2m.paged_pages or domain.ring.used:
            self.w.result.failures.append(
                f"liveness: {domain.p2m.paged_pages} gfns still paged, {domain.ring.used} "
                f"requests unanswered {self.w.sc.liveness_s:g} s after the faults stopped"
            )
        report = await as_proc("guest", verify_all, guest, shadow, stuck_after=self.w.sc.liveness_s)
        self.w.emit("check.verify", ok=report.ok, verified=report.verified)
        problems = guest_problems(report.to_dict(), losses_allowed=self.w.losses_allowed)
        self.w.result.failures += [f"final verify: {p}" for p in problems]


__all__ = ["MEDIA_FAULTS", "Checks", "guest_problems", "watch"]
