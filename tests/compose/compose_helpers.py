"""What the compose tests share: deadlines, docker calls with timeouts, one compose project.

Every docker call has a timeout; a scenario's waits are bounded by its `Deadline`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
#: The fallback base image when XPEMU_BASE_IMAGE is unset (used only if already local).
DEFAULT_BASE = "python:3.11-slim"
RUN_DIR = "/run/xpemu"


@dataclass(frozen=True)
class Image:
    """The compose command to use, the base image and the project image built on it."""

    compose: list[str]
    base: str
    tag: str


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


def probe(
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
        found = probe([*argv, "version"])
        if found is not None and found.returncode == 0:
            return argv
    return None


def docker_or_skip() -> tuple[list[str], str]:
    """(compose command, base image), or skip with the reason the stack cannot run here."""
    if shutil.which("docker") is None:
        pytest.skip("no `docker` client on PATH (docker/engine.sh installs and starts one)")
    info = probe(["docker", "info", "--format", "{{.ServerVersion}}"])
    if info is None or info.returncode != 0:
        pytest.skip(f"no Docker engine answers `docker info`: {_last_line(info)}")
    compose = _compose_command()
    if compose is None:
        pytest.skip("neither `docker compose` nor `docker-compose` works")
    base = os.environ.get("XPEMU_BASE_IMAGE", "")
    if base:
        found = probe(["docker", "image", "inspect", base])
        if found is None or found.returncode != 0:
            # Asked for explicitly: a missing image is a broken setup, not a reason to skip.
            pytest.fail(f"XPEMU_BASE_IMAGE={base} is not a local image (docker/base-image.sh)")
    else:
        found = probe(["docker", "image", "inspect", DEFAULT_BASE])
        if found is None or found.returncode != 0:
            pytest.skip(
                f"no base image: XPEMU_BASE_IMAGE is unset and {DEFAULT_BASE} is not a local "
                "image (build one offline: export XPEMU_BASE_IMAGE=$(docker/base-image.sh))"
            )
        base = DEFAULT_BASE
    return compose, base


def build_image(base: str, token: str, image: str, wheelhouse: Path, dl: Deadline) -> None:
    """The project's wheelhouse, then the image from it, tagged `image` (the tag and the
    build stage's label carry `token`: `remove_image` finds both)."""
    with stage("wheelhouse (pip wheel)"):
        run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
             str(REPO), "-w", str(wheelhouse)],
            dl.left(150),
        )  # fmt: skip
    with stage("image (docker build)"):
        run(
            ["docker", "build", "--quiet", "--network", "none",
             "--build-arg", f"BASE_IMAGE={base}",
             "--build-arg", f"WHEELHOUSE={wheelhouse.relative_to(REPO)}",
             "--build-arg", f"XPEMU_BUILD_ID={token}",
             "-t", image, str(REPO)],
            dl.left(180),
        )  # fmt: skip


def remove_image(token: str, image: str) -> None:
    """The image tag and the build stage's untagged image (see the Dockerfile)."""
    probe(["docker", "image", "rm", "--force", image], 60)
    label = f"label=org.xpemu.build-id={token}"
    built = probe(["docker", "image", "ls", "-q", "--filter", label])
    if built is not None and built.stdout.split():
        probe(["docker", "image", "rm", "--force", *built.stdout.split()], 60)


class Stack:
    """One compose project of a test: compose calls, container state, hv's status."""

    def __init__(
        self,
        compose: list[str],
        project: str,
        env: dict[str, str],
        dl: Deadline,
        profiles: tuple[str, ...] = (),
    ) -> None:
        self.argv = [*compose, "-f", str(REPO / "compose.yaml"), "-p", project]
        for profile in profiles:
            self.argv += ["--profile", profile]
        self.project = project
        self.env = env
        self.dl = dl

    def compose(self, *args: str, cap: float = 120.0, check: bool = True) -> str:
        """Run a compose subcommand for this project; its stdout."""
        return run([*self.argv, *args], self.dl.left(cap), env=self.env, check=check).stdout

    def cids(self, service: str) -> list[str]:
        """The container ids of a service."""
        return self.compose("ps", "-q", service, cap=30).split()

    def cid(self, service: str) -> str:
        """The container id of a service of one container."""
        ids = self.cids(service)
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

    def services(self) -> list[str]:
        """The service of each container labelled with this project, sorted."""
        label = f"label=com.docker.compose.project={self.project}"
        fmt = '{{.Label "com.docker.compose.service"}}'
        out = run(["docker", "ps", "-a", "--filter", label, "--format", fmt], 30).stdout
        return sorted(out.split())

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

    @contextlib.contextmanager
    def scenario(self) -> Iterator[None]:
        """A test's body, then `down -v`, checked to leave nothing of the project behind.
        After a failure, the services' logs are kept and `down -v` runs all the same."""
        down_done = False
        try:
            yield
            with stage("down -v"):
                self.compose("down", "-v", "--remove-orphans")
            down_done = True
            assert self.leftovers() == {"containers": [], "volumes": [], "networks": []}
        except BaseException as exc:
            self.keep_logs(exc)
            raise
        finally:
            if not down_done:
                self.down()

    def keep_logs(self, exc: BaseException) -> None:
        """After a failure: what the services said, under build/ (git-ignored, outlives
        pytest's rotation of its temporary directories), named in the exception's notes."""
        logs = REPO / "build" / f"{self.project}.log"
        logs.parent.mkdir(exist_ok=True)
        proc = probe([*self.argv, "logs", "--no-color", "--tail", "200"], 60, self.env)
        if proc is not None:
            logs.write_text(proc.stdout + proc.stderr)
            exc.add_note(f"compose logs: {logs}")

    def down(self) -> None:
        """`down -v` for cleanup, whatever state the project is in."""
        probe([*self.argv, "down", "-v", "--remove-orphans", "--timeout", "10"], 120, self.env)
