"""The guest workload: vCPUs as concurrent tasks on one connection, every byte checked.

Life of a run:

1. *workload*: each vCPU loops (pattern, read/write mix) until the duration, the op budget
   or a stop request ends it; a balloon task now and then gives gfns back
   (`decrease_reservation`, after which every access must answer EFAULT) and takes them
   back (`increase_reservation`: zeros);
2. *balloon-in*: every gfn still ballooned out comes back, so the end state is complete;
3. *verify*: the vCPUs read every gfn back in full and compare it with the shadow.

Each access is checked against the shadow by `CheckedRun` (guest/access.py), which also
holds the run's state; this module adds the tasks that drive the phases.

"Stuck" vCPUs: a vCPU whose access stays pending longer than `stuck_after` seconds. The
guest cannot see whether a pager is attached (it has only `guest.sock`); the caller sets
`stuck_after` above the longest pager outage it expects (the stack sets it from its
restart timing), so a vCPU pending that long means no pager is serving it. Once only
stuck vCPUs are left pending after the workload, the run ends instead of hanging.
"""

from __future__ import annotations

import random
from typing import Final

import structlog
import trio

from protocol import Errno
from transport import Client, ConnectionClosed

from .access import CheckedRun
from .config import GuestConfig
from .patterns import make_pattern
from .report import GuestReport
from .shadow import GfnState, Shadow

log = structlog.get_logger("guest")

#: Seconds between progress log lines (`guest.progress`, read by `xpemu`'s live view).
PROGRESS_EVERY: Final = 1.0


class _Run(CheckedRun):
    """One run: its tasks over `CheckedRun`'s state; `run_workload` is its public face."""

    # ---- tasks ---------------------------------------------------------------------

    async def vcpu(self, vcpu: int) -> None:
        """One vCPU: workload loop, then its share of the verify pass."""
        cfg = self.cfg
        rng = random.Random(f"{cfg.seed}/vcpu/{vcpu}")
        next_gfn = make_pattern(
            cfg.pattern,
            nr_gfns=self.nr_gfns,
            vcpu=vcpu,
            vcpus=self.nvcpus,
            rng=rng,
            zipf=self.zipf,
            hot_fraction=cfg.hot_fraction,
            hot_shift_s=cfg.hot_shift_s,
        )
        while not self.stopping():
            gfn = next_gfn(trio.current_time() - self.t0)
            if gfn in self.busy:
                await trio.lowlevel.checkpoint()  # a balloon call holds it: pick another
                continue
            await self.access(vcpu, gfn, rng.random() < cfg.write_ratio, rng)
        self.phase[vcpu] = "waiting"
        self._poke()
        await self.verify_go.wait()
        self.phase[vcpu] = "verify"
        if cfg.verify:
            while (todo := next(self.verify_iter, None)) is not None:
                await self.verify_gfn(vcpu, todo)
        self.phase[vcpu] = "done"
        self._poke()

    async def balloon(self) -> None:
        """Now and then give a few gfns back to the host, and take earlier ones back."""
        try:
            await self._balloon_loop()
        finally:
            self.balloon_done.set()

    async def _balloon_loop(self) -> None:
        cfg = self.cfg
        if cfg.balloon_every <= 0 or cfg.balloon_count <= 0:
            return
        rng = random.Random(f"{cfg.seed}/balloon")
        while True:
            with trio.move_on_at(self._balloon_wake()):
                await self.drain.wait()
            if self.stopping():
                return
            await self.balloon_in()
            picked = []
            for _ in range(cfg.balloon_count * 4):
                gfn = rng.randrange(self.nr_gfns)
                if (
                    gfn not in self.inflight
                    and gfn not in self.busy
                    and self.shadow.states[gfn] in (GfnState.ZERO, GfnState.DATA)
                ):
                    picked.append(gfn)
                    self.busy.add(gfn)
                    if len(picked) == cfg.balloon_count:
                        break
            if not picked:
                continue
            try:
                reply = await self.client.request("decrease_reservation", gfns=picked)
            finally:
                self.busy.difference_update(picked)
            if not reply["ok"]:
                self._unexpected(picked[0], "decrease_reservation", reply["err"], reply["msg"])
                continue
            for gfn, res in zip(picked, reply["results"], strict=True):
                if res == 0:
                    self.shadow.ballooned_out(gfn)
                    self.ballooned.append(gfn)
                    self.report.balloon_out += 1
                elif res in (Errno.EAGAIN, Errno.EBUSY):
                    # Ring full or a foreign mapping holds it: nothing changed, by protocol.
                    self.report.balloon_refused[res] = self.report.balloon_refused.get(res, 0) + 1
                else:
                    self._unexpected(gfn, "decrease_reservation", res, "")
            log.debug("guest.balloon_out", gfns=picked, results=reply["results"])

    def _balloon_wake(self) -> float:
        return trio.current_time() + self.cfg.balloon_every

    async def balloon_in(self, *, everything: bool = False) -> None:
        """Take back the gfns ballooned out earlier (those no vCPU is touching right now)."""
        gfns = [g for g in self.ballooned if g not in self.inflight]
        if everything:
            gfns = [g for g in range(self.nr_gfns) if self.shadow.states[g] == GfnState.INVALID]
        if not gfns:
            return
        self.busy.update(gfns)
        try:
            reply = await self.client.request("increase_reservation", gfns=gfns)
        finally:
            self.busy.difference_update(gfns)
        if not reply["ok"]:
            self._unexpected(gfns[0], "increase_reservation", reply["err"], reply["msg"])
            return
        back = set()
        for gfn, res in zip(gfns, reply["results"], strict=True):
            if res == 0:
                self.shadow.ballooned_in(gfn)
                self.report.balloon_in += 1
                back.add(gfn)
            elif res == Errno.ENOMEM:
                self.report.balloon_refused[res] = self.report.balloon_refused.get(res, 0) + 1
            else:
                self._unexpected(gfn, "increase_reservation", res, "")
                back.add(gfn)  # do not retry forever
        self.ballooned = [g for g in self.ballooned if g not in back]

    async def coordinator(self) -> None:
        """Move the vCPUs from the workload to the verify pass once all are out of it."""

        def workload_over() -> bool:
            return all(
                self.phase[v] != "work" or (v in self.stuck and self.pending_since[v] is not None)
                for v in range(self.nvcpus)
            )

        while not workload_over():
            await self.progress.wait()
        self.draining = True
        self.drain.set()
        await self.balloon_done.wait()
        if self.cfg.balloon_every > 0:
            await self.balloon_in(everything=True)
        self.verify_go.set()

        def verify_over() -> bool:
            return all(
                self.phase[v] == "done" or (v in self.stuck and self.pending_since[v] is not None)
                for v in range(self.nvcpus)
            )

        while not verify_over():
            await self.progress.wait()
        self.finished.set()

    async def watchdog(self) -> None:
        """Mark stuck vCPUs, log progress, and end the run when only stuck vCPUs are left."""
        tick = min(0.25, self.cfg.stuck_after / 4)
        next_progress = trio.current_time() + PROGRESS_EVERY
        while True:
            with trio.move_on_after(tick):
                await self.finished.wait()
            now = trio.current_time()
            for v, since in enumerate(self.pending_since):
                if since is not None and now - since > self.cfg.stuck_after and v not in self.stuck:
                    self.stuck.add(v)
                    log.error("vcpu.stuck", vcpu=v, pending_s=round(now - since, 3))
                    self._poke()
            if now >= next_progress:
                next_progress = now + PROGRESS_EVERY
                self._log_progress()
            if self.finished.is_set():
                pending = [v for v, s in enumerate(self.pending_since) if s is not None]
                if not pending:
                    return
                # Only stuck vCPUs are left and their accesses may never return: end the
                # run rather than hang (their replies, if any, are no longer awaited).
                self.report.aborted = f"vCPUs {sorted(pending)} still paused at the end"
                log.error("guest.abandon_stuck", vcpus=sorted(pending))
                self.scope.cancel()
                return

    def _log_progress(self) -> None:
        r = self.report
        log.info(
            "guest.progress",
            ops=r.ops,
            reads=r.reads,
            writes=r.writes,
            faults_seen=r.faults_seen,
            verified=r.verified,
            integrity_errors=r.integrity_errors,
            stuck_vcpus=len(self.stuck),
            phase="verify" if self.draining else "workload",
            latency_ms=self.window_lat.summary_ms(),  # of this line's interval only
        )
        self.window_lat.reset()

    async def run(self) -> GuestReport:
        """Run every phase; returns the report."""
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.watchdog)
                    nursery.start_soon(self.coordinator)
                    nursery.start_soon(self.balloon)
                    for v in range(self.nvcpus):
                        nursery.start_soon(self.vcpu, v)
        except BaseExceptionGroup as group:
            # A lost connection fails every vCPU at once: hand the caller one exception.
            closed, rest = group.split(ConnectionClosed)
            if closed is not None and rest is None:
                raise _first(closed) from None
            raise
        r = self.report
        r.elapsed_s = round(trio.current_time() - self.t0, 3)
        r.latency_ms = self.lat.summary_ms()
        r.latency_hist_ms = self.lat.buckets_ms()
        r.verify_latency_ms = self.verify_lat.summary_ms()
        r.stuck_vcpus = sorted(self.stuck)
        r.max_pending_s = round(r.max_pending_s, 3)
        if self.cfg.verify:
            r.unverified = self.nr_gfns - r.verified
        return r


async def run_workload(
    client: Client,
    config: GuestConfig,
    *,
    stop: trio.Event | None = None,
    shadow: Shadow | None = None,
) -> GuestReport:
    """Run the workload over `client` (hello already done as role guest); never hangs on a
    stuck vCPU longer than `config.stuck_after` past the end of the workload.

    `stop` ends the workload phase early (the verify pass still runs). `shadow` lets the
    caller keep the shadow afterwards (for example to save it for a later check).
    """
    config.check()
    info = client.info
    if not info:
        raise ValueError("run_workload needs a client that said hello")
    vcpus = info["vcpus"] if config.vcpus is None else config.vcpus
    if vcpus > info["vcpus"]:
        raise ValueError(f"the domain has {info['vcpus']} vCPUs, {vcpus} asked for")
    if shadow is None:
        shadow = Shadow(info["nr_gfns"], config.seed)
    elif shadow.nr_gfns != info["nr_gfns"]:
        raise ValueError("shadow size does not match the domain")
    run = _Run(client, config, shadow, vcpus, stop if stop is not None else trio.Event())
    log.info(
        "guest.started",
        vcpus=vcpus,
        nr_gfns=shadow.nr_gfns,
        pattern=config.pattern,
        seed=config.seed,
        shadow_bytes=shadow.nbytes(),
    )
    report = await run.run()
    log.info(
        "guest.finished",
        ok=report.ok,
        ops=report.ops,
        verified=report.verified,
        integrity_errors=report.integrity_errors,
        stuck_vcpus=report.stuck_vcpus,
    )
    return report


def _first(group: BaseExceptionGroup) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def verify_all(
    client: Client, shadow: Shadow, *, vcpus: int | None = None, stuck_after: float = 10.0
) -> GuestReport:
    """Only the verify pass: read every gfn and compare with `shadow` (no workload)."""
    config = GuestConfig(
        seed=shadow.seed, duration=0.0, balloon_every=0.0, stuck_after=stuck_after, vcpus=vcpus
    )
    return await run_workload(client, config, shadow=shadow)
