"""One attached pager: wires its jobs together, dispatches hv's events, runs until stopped.

`run_pager(stream, store, config)` runs one pager over any trio stream connected to hv's
privcmd socket, with a store opened by the caller (`pager.commit.open_store`). Crash
safety rests on three orders, each kept by one module:

- page-out (`pager.pageout`, `pager.commit`): nominate -> map -> write slots and the
  records naming them -> sync (the commit) -> evict, so a gfn is never frameless before
  its copy is durable;
- page-in (`pager.pagein`, `pager.proactive`): read + verify -> prep -> resume -> free the
  row (only after prep answered 0), so a crash leaves the copy for the redelivered request;
- recovery (`pager.recovery`): audit, free rows of gfns that have a frame (or are gone),
  report frameless gfns without a row as lost (mark_broken: the guest gets EIO, never
  wrong bytes), adopt leftover `paging_out` gfns, then serve the redelivered requests.
"""

from __future__ import annotations

from typing import Any, Final

import structlog
import trio

from protocol import Errno, OpError
from transport import Client, ConnectionClosed, open_client

from .balance import Balancer
from .commit import Committer, bind_instance, close_store
from .config import ConnectionLost, PagerConfig, PagerError, PagerStats
from .drain import Drain
from .drops import Drops
from .faults import NO_FAULTS, Faults, SimulatedCrash
from .hvcalls import HvCalls
from .pagein import PageIn
from .pageout import PageOut
from .policy import make_policy
from .proactive import Proactive
from .recovery import recover
from .state import PagerState
from .store import PageStore

log = structlog.get_logger("pager")

#: Longest pause between two hello attempts refused with EBUSY.
HELLO_BACKOFF_MAX: Final = 1.0


class Pager:
    """One attached pager: its store, client, state and jobs for the length of a run."""

    def __init__(
        self,
        client: Client,
        store: PageStore,
        config: PagerConfig,
        faults: Faults,
        info: dict[str, Any],
    ) -> None:
        self.client = client
        self.store = store
        self.config = config
        self.faults = faults
        self.nr_gfns: int = info["nr_gfns"]
        self.stats = PagerStats(epoch=info.get("epoch") or 0)
        self.hv_target: int | None = None
        self.hv = HvCalls(client)
        self.policy = make_policy(
            config.policy, self.nr_gfns, self.hv.accessed, mru_size=config.mru_size
        )
        self.state = PagerState(self.stats)
        self.commit = Committer(store, self.state, self.stats, faults)
        self.drops = Drops(
            self.hv, self.state, self.commit, self.policy, self.stats, delay=config.drop_delay
        )
        hv, state, commit, policy, stats = self.hv, self.state, self.commit, self.policy, self.stats
        self.pagein = PageIn(
            hv=hv,
            state=state,
            commit=commit,
            drops=self.drops,
            policy=policy,
            stats=stats,
            config=config,
            faults=faults,
            nr_gfns=self.nr_gfns,
        )
        self.proactive = Proactive(hv=hv, state=state, commit=commit, policy=policy, stats=stats)
        self.pageout = PageOut(
            hv=hv,
            state=state,
            commit=commit,
            policy=policy,
            stats=stats,
            config=config,
            faults=faults,
        )
        self.balancer = Balancer(
            hv=hv,
            state=state,
            commit=commit,
            pageout=self.pageout,
            proactive=self.proactive,
            config=config,
        )
        self.drain = Drain(
            hv=hv,
            state=state,
            commit=commit,
            pageout=self.pageout,
            proactive=self.proactive,
            stats=stats,
            config=config,
        )

    async def wait_progress(self) -> None:
        """Return after the pager's next step (a batch, a page-in, a request received)."""
        await self.state.wait_progress()

    async def recover(self) -> None:
        """Audit hv and reconcile the store with it (DESIGN.md "Recovery")."""
        await recover(
            nr_gfns=self.nr_gfns,
            hv=self.hv,
            commit=self.commit,
            drops=self.drops,
            policy=self.policy,
            state=self.state,
            stats=self.stats,
            faults=self.faults,
        )

    # -- events -----------------------------------------------------------------------

    async def _dispatch(self) -> None:
        # Events are handled as the client reads them (no task switch on the way to the
        # page-in worker); the channel only tells when the connection ends.
        self.client.take_events(self._on_event)
        async for ev, fields in self.client.events:
            self._on_event(ev, fields)
        raise ConnectionLost("hv closed the connection")

    def _on_event(self, ev: str, fields: dict[str, Any]) -> None:
        if ev == "target":
            self.hv_target = fields["tot_pages"]
            log.info("pager.target", target=self.hv_target)
            self.state.wake()
        elif ev == "mem_event":
            submit = self.state.submit
            new = [job for req in fields["reqs"] if (job := submit(req)) is not None]
            if new and not self.pagein.now(new):
                for job in new:
                    self.state.jobs_send.send_nowait(job)
        self.state.notify()

    async def _balance_then_drain(self) -> None:
        await self.balancer.run()
        await self.drain.run()

    # -- run --------------------------------------------------------------------------

    async def run(
        self, stop: trio.Event, task_status: trio.TaskStatus[Pager] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Recover, then serve until `stop` is set (then exit as configured)."""
        async with trio.open_nursery() as nursery:
            self.state.attach(nursery)
            await self.recover()
            # hv sent the unanswered requests right after our hello: they are redeliveries.
            while True:
                try:
                    ev, fields = self.client.events.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if ev == "mem_event":
                    self.stats.redelivered += len(fields["reqs"])
                    for req in fields["reqs"]:
                        if (job := self.state.submit(req)) is not None:
                            self.state.jobs_send.send_nowait(job)
                elif ev == "target":
                    self.hv_target = fields["tot_pages"]
            nursery.start_soon(self._dispatch)
            nursery.start_soon(self.drops.worker)
            nursery.start_soon(self.commit.freer)
            for _ in range(self.config.concurrency):
                nursery.start_soon(self.pagein.worker)
            nursery.start_soon(self._balance_then_drain)
            task_status.started(self)
            await stop.wait()
            log.info("pager.stopping", on_exit=self.config.on_exit)
            if self.config.on_exit == "pagein":
                self.state.stopping = True
                self.state.wake()
                await self.drain.done.wait()
            nursery.cancel_scope.cancel()
        if self.drain.error is not None:
            raise PagerError(self.drain.error)


async def _hello(client: Client, config: PagerConfig) -> dict[str, Any]:
    """hello, retrying EBUSY (the old pager's connection not yet seen closed) with backoff."""
    delay = 0.02
    with trio.move_on_after(config.hello_timeout) as scope:
        while True:
            try:
                return await client.hello(config.domid)
            except OpError as exc:
                if exc.errno != Errno.EBUSY:
                    raise PagerError(f"hello refused: {exc}") from None
                log.info("pager.hello_busy", retry_in=delay, msg=exc.msg)
            await trio.sleep(delay)
            delay = min(delay * 2, HELLO_BACKOFF_MAX)
    assert scope.cancelled_caught
    raise PagerError(f"hello still refused with EBUSY after {config.hello_timeout:g} s")


def find_exception(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`exc` itself or the first exception of `kind` inside (nested) exception groups."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_exception(inner, kind)
            if found is not None:
                return found
    return None


async def run_pager(
    stream: trio.abc.Stream,
    store: PageStore,
    config: PagerConfig | None = None,
    *,
    faults: Faults = NO_FAULTS,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[Pager] = trio.TASK_STATUS_IGNORED,
) -> PagerStats:
    """Run one pager over `stream` (connected to hv's privcmd socket) until `stop` is set.

    `store` is an open, locked store (`pager.commit.open_store`); the pager owns it and
    the stream from here on and closes both on every way out. Says hello (retrying
    EBUSY), recovers, then serves page-ins, follows the target and pages out.
    `task_status.started(pager)` once recovery is done. On `stop`: page everything in and
    detach (`on_exit="pagein"`) or leave the store as it is (`"keep"`). Raises
    ConnectionLost if hv goes away, PagerError on a refused hello, and `SimulatedCrash`
    (after dropping the store's descriptors, as a dying process would) when a crash point
    fires in-process.
    """
    config = config or PagerConfig()
    stop = trio.Event() if stop is None else stop
    crashed = False
    try:
        async with open_client(stream, "pager") as client:
            info = await _hello(client, config)
            outcome = await bind_instance(store, info["instance"])
            structlog.contextvars.bind_contextvars(domid=info["domid"])
            log.info(
                "pager.attached",
                epoch=info.get("epoch"),
                instance=info["instance"],
                nr_gfns=info["nr_gfns"],
                store=outcome,
                rows=len(store.rows),
                policy=config.policy,
            )
            pager = Pager(client, store, config, faults, info)
            await pager.run(stop, task_status)
            log.info("pager.exit", **pager.stats.as_dict())
            return pager.stats
    except BaseException as exc:
        crash = find_exception(exc, SimulatedCrash)
        if crash is not None:
            crashed = True
            raise crash from None
        if find_exception(exc, trio.Cancelled) is not None:
            raise  # cancelled from outside: never turn that into one of our errors
        if find_exception(exc, ConnectionLost) or find_exception(exc, ConnectionClosed):
            raise ConnectionLost(f"connection to hv lost: {exc!r}") from None
        error = find_exception(exc, PagerError)
        if error is not None:
            raise error from None
        raise
    finally:
        await close_store(store, crashed=crashed)


__all__ = [
    "ConnectionLost",
    "Pager",
    "PagerConfig",
    "PagerError",
    "PagerStats",
    "find_exception",
    "run_pager",
]
