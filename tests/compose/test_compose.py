"""`docker compose up` for real: build the image, run the stack, SIGKILL the pager, stop.

The test drives the repository's own Dockerfile and compose.yaml through the Docker engine
(Compose v2 `docker compose` or v1 `docker-compose`, whichever works). It is skipped,
with the reason, when no engine answers `docker info` or no base image is usable
(XPEMU_BASE_IMAGE unset and python:3.11-slim not a local image; docker/base-image.sh
builds one offline).

Every docker call has a timeout, the whole scenario an absolute deadline, and a finally
removes what the test created (project containers, volumes, network, image tag, wheelhouse)
on every path; after a failure the services' logs stay in build/xpemu-test-<id>.log.
Polling hv's `status` is the only way to watch an external system here; each poll is
bounded by the deadline.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.compose, pytest.mark.timeout(330)]

REPO = Path(__file__).resolve().parents[2]
#: The whole scenario (wheelhouse, build, up, kills, stop, down) must end within this.
BUDGET_S = 270.0
#: Pager kills, each followed by a check that it came back and paging resumed.
KILLS = 3
#: The fallback base image when XPEMU_BASE_IMAGE is unset (used only if already local).
DEFAULT_BASE = "python:3.11-slim"
RUN_DIR = "/run/xpemu"
REPORT = f"{RUN_DIR}/guest-report.json"


class Deadline:
    """An absolute deadline; `left()` bounds every subprocess and every wait."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, cap: float | None = None) -> float:
        """Seconds left (at most `cap`); fails the test once the deadline has passed."""
        left = self.end - time.monotonic()
        if left <= 0:
            pytest.fail("compose scenario ran past its deadline")
        return left if cap is None else min(left, cap)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Log how long a stage of the scenario took (see them with --log-cli-level=INFO)."""
    t0 = time.monotonic()
    try:
        yield
    except BaseException:
        log.info("compose stage %-28s %6.1f s FAILED", name, time.monotonic() - t0)
        raise
    log.info("compose stage %-28s %6.1f s", name, time.monotonic() - t0)


def run(
    argv: list[str],
    timeout: float,
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout (the child is killed on expiry); fail with its stderr."""
    try:
        proc = subprocess.run(
            argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(argv)}` did not finish within {timeout:.0f} s")
    if check and proc.returncode != 0:
        pytest.fail(
            f"`{' '.join(argv)}` exited {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()[-3000:]}"
        )
    return proc


def _probe(
    argv: list[str], timeout: float = 30.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str] | None:
    """Run a probe or cleanup command; None when it cannot run at all or times out."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _last_line(proc: subprocess.CompletedProcess[str] | None) -> str:
    if proc is None:
        return "timed out"
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def _compose_command() -> list[str] | None:
    """`docker compose` (v2) if it works, else `docker-compose` (v1.29), else None."""
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) is None:
            continue
        probe = _probe([*argv, "version"])
        if probe is not None and probe.returncode == 0:
            return argv
    return None


@pytest.fixture
def docker_setup() -> tuple[list[str], str]:
    """(compose command, base image), or skip with the reason the stack cannot run here."""
    if shutil.which("docker") is None:
        pytest.skip("no `docker` client on PATH (docker/engine.sh installs and starts one)")
    info = _probe(["docker", "info", "--format", "{{.ServerVersion}}"])
    if info is None or info.returncode != 0:
        pytest.skip(f"no Docker engine answers `docker info`: {_last_line(info)}")
    compose = _compose_command()
    if compose is None:
        pytest.skip("neither `docker compose` nor `docker-compose` works")
    base = os.environ.get("XPEMU_BASE_IMAGE", "")
    if base:
        found = _probe(["docker", "image", "inspect", base])
        if found is None or found.returncode != 0:
            # Asked for explicitly: a missing image is a broken setup, not a reason to skip.
            pytest.fail(f"XPEMU_BASE_IMAGE={base} is not a local image (docker/base-image.sh)")
    else:
        found = _probe(["docker", "image", "inspect", DEFAULT_BASE])
        if found is None or found.returncode != 0:
            pytest.skip(
                f"no base image: XPEMU_BASE_IMAGE is unset and {DEFAULT_BASE} is not a local "
                "image (build one offline: export XPEMU_BASE_IMAGE=$(docker/base-image.sh))"
            )
        base = DEFAULT_BASE
    return compose, base


class Stack:
    """One compose project of the test: compose calls, container state, hv's status."""

    def __init__(self, compose: list[str], project: str, env: dict[str, str], dl: Deadline):
        self.argv = [*compose, "-f", str(REPO / "compose.yaml"), "-p", project]
        self.project = project
        self.env = env
        self.dl = dl

    def compose(self, *args: str, cap: float = 120.0, check: bool = True) -> str:
        """Run a compose subcommand for this project; its stdout."""
        return run([*self.argv, *args], self.dl.left(cap), env=self.env, check=check).stdout

    def cid(self, service: str) -> str:
        """The container id of a service (one container per service here)."""
        ids = self.compose("ps", "-q", service, cap=30).split()
        assert len(ids) == 1, f"{service}: expected one container, got {ids}"
        return ids[0]

    def inspect(self, cid: str) -> dict[str, Any]:
        """`docker inspect` of one container."""
        out = run(["docker", "inspect", cid], self.dl.left(30)).stdout
        return json.loads(out)[0]

    def status(self, hv: str) -> dict[str, Any] | None:
        """hv's status through `xpemu status --json` in the hv container; None if no answer."""
        proc = run(
            ["docker", "exec", hv, "xpemu", "status", "--run-dir", RUN_DIR, "--json"],
            self.dl.left(30),
            check=False,
        )
        if proc.returncode != 0:
            return None
        return json.loads(proc.stdout)

    def wait_for(
        self, what: str, probe: Callable[[], Any], within: float = 60.0, poll: float = 0.3
    ) -> Any:
        """Poll `probe` until it returns something truthy; fail after `within` seconds."""
        end = min(self.dl.end, time.monotonic() + within)
        while time.monotonic() < end:
            found = probe()
            if found:
                return found
            time.sleep(poll)
        pytest.fail(f"timed out waiting for {what} ({within:g} s)")

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, volumes and networks still labelled with this project."""
        label = f"label=com.docker.compose.project={self.project}"
        found = {}
        for kind, argv in (
            ("containers", ["docker", "ps", "-aq", "--filter", label]),
            ("volumes", ["docker", "volume", "ls", "-q", "--filter", label]),
            ("networks", ["docker", "network", "ls", "-q", "--filter", label]),
        ):
            found[kind] = run(argv, 30).stdout.split()
        return found


def domain(status: dict[str, Any]) -> dict[str, Any]:
    """Domain 1's entry with its counters merged in under "counters"."""
    (dom,) = [d for d in status["domains"] if d["domid"] == 1]
    return {**dom, "counters": status.get("counters", {}).get("1", {})}


def paging(stack: Stack, hv: str, min_epoch: int, min_evicted: int) -> dict[str, Any] | None:
    """Domain 1 when a pager of at least `min_epoch` is attached and has evicted pages."""
    status = stack.status(hv)
    if status is None:
        return None
    dom = domain(status)
    ok = (
        dom["pager"]["attached"]
        and dom["pager"]["epoch"] >= min_epoch
        and dom["paged_pages"] > 0
        and dom["counters"].get("page.evicted", 0) > min_evicted
    )
    return dom if ok else None


def kill_pager_and_recover(
    stack: Stack, hv: str, pager: str, dom: dict[str, Any], n: int
) -> dict[str, Any]:
    """SIGKILL the pager; check it restarts, re-attaches with a new epoch, pages again."""
    before = stack.inspect(pager)
    assert before["State"]["Running"], f"pager not running before kill {n}"
    epoch = dom["pager"]["epoch"]
    attaches = dom["counters"]["pager_attaches"]
    # SIGKILL to the pager's python (pid 1 is the init, which exits with it): the engine
    # sees the container die on its own, so the restart policy applies.
    stack.compose("exec", "-T", "pager", "sh", "-c", "kill -KILL -1", cap=30)
    stack.wait_for(
        f"pager restart {n}",
        lambda: stack.inspect(pager)["RestartCount"] > before["RestartCount"],
        within=30,
    )
    # Back: a new epoch attached (it recovered from the pager-state volume) ...
    back = stack.wait_for(f"pager {n} to re-attach", lambda: paging(stack, hv, epoch + 1, -1))
    assert back["counters"]["pager_attaches"] > attaches
    # ... and paging resumes under it: more page-outs and more page-ins (the guest's
    # faults served) after the re-attach.
    evicted = back["counters"].get("page.evicted", 0)
    resumed = back["counters"].get("page.resumed", 0)

    def resumed_paging() -> dict[str, Any] | None:
        now = paging(stack, hv, epoch + 1, evicted)
        return now if now and now["counters"].get("page.resumed", 0) > resumed else None

    now = stack.wait_for(f"paging to resume after kill {n}", resumed_paging)
    assert not now["pager"]["orphaned"]
    return now


def read_report(cid: str, dl: Deadline) -> dict[str, Any]:
    """The guest's JSON report, copied out of its (stopped) container."""
    tar_bytes = subprocess.run(
        ["docker", "cp", f"{cid}:{REPORT}", "-"],
        capture_output=True,
        timeout=dl.left(30),
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        member = tar.extractfile(tar.getmembers()[0])
        assert member is not None
        return json.loads(member.read())


def test_compose_stack_survives_pager_kills(docker_setup: tuple[list[str], str]) -> None:
    """Build, up, paging, SIGKILL the pager 3 times (restart + recovery), stop, down -v."""
    compose, base = docker_setup
    dl = Deadline(BUDGET_S)
    token = secrets.token_hex(4)
    project = f"xpemu-test-{token}"
    image = f"xpemu-test:{token}"
    wheelhouse = REPO / "build" / f"wheelhouse-test-{token}"
    env = {
        **os.environ,
        "XPEMU_IMAGE": image,
        "XPEMU_BASE_IMAGE": base,
        # No fault injection leaking in from the caller's environment.
        "XPEMU_FAULTS": "",
    }
    stack = Stack(compose, project, env, dl)
    image_built = False
    down_done = False
    try:
        with stage("wheelhouse (pip wheel)"):
            run(
                [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                 str(REPO), "-w", str(wheelhouse)],
                dl.left(150),
            )  # fmt: skip
        image_built = True  # the tag is unique: whatever exists under it is ours
        with stage("image (docker build)"):
            run(
                ["docker", "build", "--quiet", "--network", "none",
                 "--build-arg", f"BASE_IMAGE={base}",
                 "--build-arg", f"WHEELHOUSE={wheelhouse.relative_to(REPO)}",
                 "--build-arg", f"XPEMU_BUILD_ID={token}",
                 "-t", image, str(REPO)],
                dl.left(180),
            )  # fmt: skip

        with stage("up -d"):
            stack.compose("up", "-d", "--no-build")
        hv, pager, guest = (stack.cid(s) for s in ("hv", "pager", "guest"))
        for cid in (hv, pager, guest):
            assert stack.inspect(cid)["HostConfig"]["NetworkMode"] == "none"
        with stage("first page-outs"):
            dom = stack.wait_for("paging to start", lambda: paging(stack, hv, 1, 0))

        killed_since = int(time.time()) - 1
        for n in range(1, KILLS + 1):
            with stage(f"kill {n}, restart, paging again"):
                dom = kill_pager_and_recover(stack, hv, pager, dom, n)
        after = stack.inspect(pager)
        assert after["RestartCount"] == KILLS
        assert after["State"]["Running"]
        # Each death was a SIGKILL (137 = 128 + 9), seen by the engine as the container
        # dying on its own.
        deaths = run(
            ["docker", "events", "--since", str(killed_since),
             "--until", str(int(time.time()) + 1),
             "--filter", f"container={pager}", "--filter", "event=die",
             "--format", '{{index .Actor.Attributes "exitCode"}}'],
            dl.left(30),
        ).stdout.split()  # fmt: skip
        assert deaths == ["137"] * KILLS

        # Stop the guest: it ends its workload, reads every gfn back and writes its report.
        with stage("stop guest (verify all)"):
            stack.compose("stop", "guest")
        state = stack.inspect(guest)["State"]
        report = read_report(guest, dl)
        assert report["integrity_errors"] == 0, report["error_details"]
        assert report["lost_gfns"] == []
        assert report["stuck_vcpus"] == []
        assert report["verified"] == report["nr_gfns"] == 4096
        assert report["ok"] is True
        assert state["ExitCode"] == 0, state

        # Stop the pager as `down` does (SIGTERM, stop_grace_period): it pages everything
        # back in and detaches, well within the grace period.
        # The guest's read-back paged everything in; wait until the pager has paged out
        # again, or the page-in check below would be empty.
        dom = stack.wait_for(
            "pages out again after the guest's verification",
            lambda: paging(stack, hv, dom["pager"]["epoch"], 0),
            within=30,
        )
        with stage(f"stop pager (page in {dom['paged_pages']})"):  # logs how long it took
            stack.compose("stop", "pager")
        # Exit 0, not 137: it finished within the grace period, before docker's SIGKILL.
        assert stack.inspect(pager)["State"]["ExitCode"] == 0
        dom = domain(stack.wait_for("hv status", lambda: stack.status(hv)))
        assert dom["paged_pages"] == 0
        assert dom["counts"]["paged"] == dom["counts"]["paging_out"] == 0
        assert dom["counts"]["broken"] == 0
        assert not dom["pager"]["attached"]

        with stage("down -v"):
            stack.compose("down", "-v", "--remove-orphans")
        down_done = True
        assert stack.leftovers() == {"containers": [], "volumes": [], "networks": []}
    except BaseException as exc:
        # Keep what the services said for the failure report: under build/ (git-ignored),
        # which outlives pytest's rotation of its temporary directories.
        logs = REPO / "build" / f"{project}.log"
        logs.parent.mkdir(exist_ok=True)
        proc = _probe([*stack.argv, "logs", "--no-color", "--tail", "200"], 60, env)
        if proc is not None:
            logs.write_text(proc.stdout + proc.stderr)
            exc.add_note(f"compose logs: {logs}")
        raise
    finally:
        if not down_done:
            _probe([*stack.argv, "down", "-v", "--remove-orphans", "--timeout", "10"], 120, env)
        if image_built:
            _probe(["docker", "image", "rm", "--force", image], 60)
            # The build stage's untagged image (see the Dockerfile), and its parents.
            label = f"label=org.xpemu.build-id={token}"
            built = _probe(["docker", "image", "ls", "-q", "--filter", label])
            if built is not None and built.stdout.split():
                _probe(["docker", "image", "rm", "--force", *built.stdout.split()], 60)
        shutil.rmtree(wheelhouse, ignore_errors=True)
