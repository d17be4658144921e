"""One simulated run: hv, the pager and the guest in one trio run, a pure function of a seed.

`run_seed(seed)` builds the world of SIM.md: hv's real core (`Hypervisor`, served over
`sim.net` links), the guest's real workload (`guest.run_workload`), the pager through a
`sim.pager_node.PagerNode`, all under `sim.clock.SimClock` (what
`MockClock(autojump_threshold=0)` does, cheaper, with timers for the links) with trio's
scheduler shuffle and every generator seeded from the seed. The plan's faults fire at
their instants; then faults stop and the checks of SIM.md run (`sim.checks`). The result
carries the verdict, what fired, and the hash of the trace.
"""

from __future__ import annotations

import contextlib
import inspect
import random
import time
import uuid
from collections.abc import Callable, Iterator, MutableSequence, Sequence
from typing import Any

import structlog
import trio

from guest import GuestConfig, Shadow, run_workload
from hv import HvConfig, Hypervisor
from pager import ConnectionLost, PagerConfig, PagerError, SimulatedCrash
from transport import Client, ConnectionClosed, open_client

from .bound import RunBound, step_budget
from .checks import MEDIA_FAULTS, Checks, guest_problems, watch
from .clock import SimClock
from .disk import DiskFaults
from .net import Link
from .pager_node import PagerNode, make_pager_node
from .plan import Plan, make_plan
from .player import FaultPlayer
from .scenario import SCENARIOS, Scenario, SimResult
from .trace import Trace, as_proc, capture_logs

log = structlog.get_logger("sim")


# ---------------------------------------------------------------------- determinism


@contextlib.contextmanager
def seeded_identities(seed: int) -> Iterator[None]:
    """`uuid.uuid4` drawn from the seed for the block: hv's `instance` ids (and any other
    identity a component draws) are then the same on every run of the seed."""
    rng = random.Random(f"xpemu-sim-identity/{seed}")
    original = uuid.uuid4
    uuid.uuid4 = lambda: uuid.UUID(int=rng.getrandbits(128), version=4)
    try:
        yield
    finally:
        uuid.uuid4 = original


class SchedulerRandom(random.Random):
    """The random source of trio's run-queue shuffle (`trio._core._run._r`) in a sim run,
    and its step counter: each pass of the run loop shuffles its batch of runnable tasks
    here and then runs every one, so the batch sizes add up to the run's scheduler steps
    (`on_batch`, `RunBound.count_batch`), counted without an instrument call per step.
    Its shuffles are `random.Random`'s (a batch of one draws nothing either way)."""

    on_batch: Callable[[int], None] | None = None

    def shuffle(self, x: MutableSequence[Any]) -> None:
        if self.on_batch is not None:
            self.on_batch(len(x))
        if len(x) > 1:
            super().shuffle(x)


@contextlib.contextmanager
def seeded_scheduler(seed: int) -> Iterator[SchedulerRandom]:
    """trio's run-queue shuffle, seeded (as Hypothesis seeds it), for the block."""
    core = trio._core._run
    flag, old = core._ALLOW_DETERMINISTIC_SCHEDULING, core._r
    core._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    core._r = sched = SchedulerRandom(f"xpemu-sim-scheduler/{seed}")
    try:
        yield sched
    finally:
        core._ALLOW_DETERMINISTIC_SCHEDULING = flag  # type: ignore[misc]
        core._r = old


def run_seed(
    seed: int,
    *,
    scenario: Scenario | str = "small",
    plan: Plan | None = None,
    keep_trace: bool = False,
    ring_mode: str | None = None,
    instruments: Sequence[trio.abc.Instrument] = (),
) -> SimResult:
    """One whole run of `seed` (its own plan unless `plan` is given); never raises for a
    failed check: the result says what failed. `instruments` watch trio's run loop (the
    benchmark counts its passes with one)."""
    sc = SCENARIOS[scenario] if isinstance(scenario, str) else scenario
    if ring_mode is not None:
        sc = Scenario(**{**_fields(sc), "ring_mode": ring_mode})
    if plan is None:
        plan = make_plan(seed, sc.window, nr_gfns=sc.nr_gfns, base=dict(sc.base))
    trace = Trace(keep=keep_trace)
    result = SimResult(seed, sc.name, plan, trace=trace if keep_trace else None)
    t0 = time.perf_counter()
    with seeded_scheduler(seed) as sched, seeded_identities(seed), capture_logs(trace):
        # Built inside the capture: hv's domain binds its logger at construction.
        world = World(seed, sc, plan, trace, result)
        sched.on_batch = world.bound.count_batch  # the bound's steps, a pass at a time
        try:
            trio.run(world.run, clock=SimClock(), instruments=list(instruments))
        except Exception as exc:  # a component blew up: that is a finding too
            result.failures.append(f"the world crashed: {_leaf(exc)!r}")
            trace.add("sim", "crashed", error=repr(_leaf(exc)))
        finally:
            world.close()
        if world.bound.stuck is not None:
            result.stuck = True
            result.failures.insert(0, world.bound.stuck)
            trace.add("sim", "stuck", why=world.bound.stuck, steps=world.bound.steps)
    result.wall_s = time.perf_counter() - t0
    result.trace_hash = trace.hexdigest()
    result.trace_events = trace.count
    result.ok = not result.failures
    return result


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`exc` itself or the first `kind` inside (nested) exception groups."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _find(inner, kind)) is not None:
                return found
    return None


def _fields(sc: Scenario) -> dict[str, Any]:
    return {f: getattr(sc, f) for f in sc.__dataclass_fields__}


# ---------------------------------------------------------------------- the world


class World:
    """The components of one run and the fault player."""

    def __init__(self, seed: int, sc: Scenario, plan: Plan, trace: Trace, result: SimResult):
        self.seed = seed
        self.sc = sc
        self.plan = plan
        self.trace = trace
        self.result = result
        self.rng = random.Random(f"xpemu-sim/{seed}")
        ring = 2 if "ring_full" in plan.toggles else sc.ring_size
        config = HvConfig(
            nr_gfns=sc.nr_gfns,
            vcpus=sc.vcpus,
            ring_size=ring,
            ring_mode=sc.ring_mode,
            target=int(sc.nr_gfns * sc.target),
        )
        if "rng" in inspect.signature(Hypervisor).parameters:  # instance ids from a seed
            self.hv = Hypervisor(config, rng=random.Random(f"xpemu-sim-hv/{seed}"))
        else:  # hv draws them with uuid4, which seeded_identities replaced
            self.hv = Hypervisor(config)
        pager_config = PagerConfig(
            batch=sc.batch,
            reserve=2 * sc.batch,  # the command line's default: the sim runs what users run
            concurrency=2,
            pipeline=4,
            hello_timeout=sc.liveness_s,
            lock_timeout=1.0,
            # BUGGIFY (SIM.md): drops wait, so the guest can balloon a gfn in and the pager
            # page it out again before its old DROP_PAGE is served (the audit's case).
            drop_delay=sc.window / 12 if "slow_drops" in plan.toggles else 0.0,
        )
        self.node: PagerNode = make_pager_node(pager_config, self.rng, self.emit)
        self.armed = ""  # the fault spec the next pager life starts with
        self.life_scope: trio.CancelScope | None = None
        self.link: Link | None = None
        self.pager_wanted = True
        self.pager_up = trio.Event()
        self.control: Client | None = None
        self.losses_allowed = False
        self.restart_hold: trio.Event | None = None
        self.player = FaultPlayer(self)
        self.checks = Checks(self)
        # No seed may hang a campaign: a step budget and a simulated-time limit (sim.bound).
        self.bound = RunBound(
            max_steps=step_budget(sc.ops),
            time_limit=sc.stuck_after * 4 + 60,
            describe=self.waiting,
        )

    def emit(self, event: str, **fields: Any) -> None:
        """A sim event into the trace."""
        component, _, name = event.partition(".")
        self.trace.add(component, name or event, **fields)

    def waiting(self) -> str:
        """What the guest was waiting for (for a stuck run's verdict)."""
        domain = self.hv.domains.get(1)
        if domain is None:
            return ""
        st = domain.status()
        pager = "attached" if st["pager"]["attached"] else "not attached"
        return (
            f"paused vCPUs {st['paused_vcpus']}, {st['ring']['used']} ring requests "
            f"unanswered, pager {pager} (life {self.result.lives})"
        )

    def close(self) -> None:
        """Release the host frames and the pager's directory."""
        self.hv.close()
        self.node.close()

    # ------------------------------------------------------------------ plumbing

    def connect(self, nursery: trio.Nursery, socket: str, name: str) -> Link:
        """A link whose server end hv serves as `socket`."""
        link = Link(name, self.emit, latency=self.sc.latency)
        nursery.start_soon(as_proc, "hv", self.hv.serve_stream, link.ends[1], socket)
        return link

    async def run(self) -> None:
        """The whole run: workload under faults, then the checks once faults stop."""
        sc = self.sc
        self.emit("sim.start", seed=self.seed, scenario=sc.name, toggles=sorted(self.plan.toggles))
        with self.bound.scope:  # the bound cancels the whole run (its verdict: stuck)
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self.bound.watch_time)
                async with open_client(
                    self.connect(nursery, "privcmd.sock", "control").ends[0], "control"
                ) as control:
                    await control.hello(None)
                    self.control = control
                    nursery.start_soon(as_proc, "pager", self.supervise)
                    async with open_client(
                        self.connect(nursery, "guest.sock", "guest").ends[0], "guest"
                    ) as guest:
                        await guest.hello(1)
                        await self._phases(nursery, guest)
                    self.pager_wanted = False
                    if self.life_scope is not None:
                        self.life_scope.cancel()
                nursery.cancel_scope.cancel()
        self.result.sim_time = trio.current_time()

    async def _phases(self, nursery: trio.Nursery, guest: Client) -> None:
        sc, res = self.sc, self.result
        shadow = Shadow(sc.nr_gfns, self.seed)
        config = GuestConfig(
            seed=self.seed,
            pattern="hotset",
            hot_fraction=max(2 / sc.nr_gfns, 0.001) if "race" in self.plan.toggles else 0.1,
            hot_shift_s=sc.window / sc.hot_shifts,
            duration=None,
            ops=sc.ops,
            balloon_every=sc.window / 8 if "balloon" in self.plan.toggles else 0.0,
            fault_ms=1e6,
            stuck_after=sc.stuck_after,
        )
        await self.pager_up.wait()
        t0 = trio.current_time()
        player_done = trio.Event()

        async def player() -> None:
            try:
                await self.player.play(t0)
            finally:
                player_done.set()

        nursery.start_soon(as_proc, "sim", player)
        report = await as_proc("guest", run_workload, guest, config, shadow=shadow)
        res.guest = report.to_dict()
        self.losses_allowed = any(
            f.kind == "disk" and f.params.get("fault") in MEDIA_FAULTS for f in self.plan.faults
        )
        res.failures += [
            f"guest: {p}" for p in guest_problems(res.guest, losses_allowed=self.losses_allowed)
        ]
        await player_done.wait()
        # Faults stop here: the disk behaves, a pager is (re)started; liveness from now on.
        self.node.set_disk_faults(DiskFaults())
        self.emit("sim.faults_stopped")
        await self.checks.check_store()
        await self.checks.check_liveness(shadow)
        violations = self.hv.check()
        if violations:
            res.failures.append(f"hv check: {violations[0]} ({len(violations)} in all)")
        res.hv_counters = dict(self.hv.domains[1].counters)
        status = self.hv.domains[1].status()
        if sc.ring_mode == "xen" and status["pager"]["orphaned"]:
            res.stalled = True  # the cause of what else failed: named first
            res.failures.insert(0, "stall: a lost pager orphaned the ring (xen ring mode)")
        self.emit("sim.end", failures=len(res.failures))

    # ------------------------------------------------------------------ the pager

    async def supervise(self) -> None:
        """Run pager lives one after the other, as a restarting supervisor does."""
        while self.pager_wanted:
            if self.restart_hold is not None:  # a check reads the dead pager's store
                await self.restart_hold.wait()
            spec, self.armed = self.armed, ""
            link = self.link = self.connect(
                self.nursery, "privcmd.sock", f"pager{self.result.lives}"
            )
            self.result.lives += 1
            self.emit("pager.start", life=self.result.lives, spec=spec)
            stop = trio.Event()
            outcome = "stopped"
            with trio.CancelScope() as scope:
                self.life_scope = scope
                watcher = self.nursery.start_soon
                watcher(self._mark_up, stop)
                try:
                    await self.node.life(link.ends[0], spec, stop)
                except BaseException as exc:  # the pager may hand it over in a group
                    outcome = self._ended(exc)
            stop.set()
            self.life_scope = None
            if scope.cancelled_caught:
                outcome = "killed"
            self.node.crashed()
            self.emit("pager.end", life=self.result.lives, outcome=outcome)
            await trio.sleep(self.sc.restart_delay)

    def _ended(self, exc: BaseException) -> str:
        """How a pager life ended, from what it raised (re-raised when not the pager's:
        a cancellation, ours or the world's, or an interrupt)."""
        crash = _find(exc, SimulatedCrash)
        if isinstance(crash, SimulatedCrash):
            self.result.crash_points[crash.point] += 1
            return f"crash:{crash.point}"
        if isinstance(exc, BaseExceptionGroup):
            cancelled, rest = exc.split(trio.Cancelled)
            if rest is None:
                raise exc
            if cancelled is not None and self.life_scope is not None:
                if self.life_scope.cancel_called:  # killed while it was failing anyway
                    return "killed"
                raise exc
            exc = rest
        elif not isinstance(exc, Exception):  # Cancelled, KeyboardInterrupt: not ours
            raise exc
        if _find(exc, ConnectionLost) or _find(exc, ConnectionClosed):
            return "connection_lost"
        error = _find(exc, PagerError)
        if error is not None:
            return f"error:{error}"
        self.result.failures.append(f"pager raised {exc!r}")  # a bug in the pager
        return f"bug:{exc!r}"

    async def _mark_up(self, stop: trio.Event) -> None:
        # The first life's hello is what the workload waits for (hv has a pager).
        await watch(lambda: stop.is_set() or self.hv.domains[1].pager is not None, 0.001)
        if self.hv.domains[1].pager is not None:
            self.pager_up.set()

    def kill(self) -> None:
        """The pager process dies now."""
        if self.life_scope is not None:
            self.node.dying()
            self.life_scope.cancel()

    # ------------------------------------------------------------------ faults


__all__ = ["SCENARIOS", "Scenario", "SimResult", "run_seed", "seeded_scheduler"]
