"""compose.yaml's campaign profile: a Dask scheduler and two workers from the project image,
and `xpemu campaign` from this venv pointed at them.

The image is conftest.py's (built once per session; skipped like the other compose test).
The scheduler's host port is a free one picked here (XPEMU_DASK_PORT), so parallel runs and
a campaign on the default 8786 do not collide. Every docker call has a timeout, the
scenario an absolute deadline, and a finally runs `down -v` on every path; after a failure
the services' logs stay in build/xpemu-campaign-<id>.log.
"""

from __future__ import annotations

import os
import secrets
import socket
import sqlite3
import sys
from pathlib import Path

import pytest
from compose_helpers import Deadline, Image, Stack, run, stage

pytestmark = [pytest.mark.compose, pytest.mark.timeout(420)]

#: The scenario (up, workers joined, 40 seeds, down) must end within this.
BUDGET_S = 150.0
WORKERS = 2
SCHEDULER = "tcp://127.0.0.1:8786"  # inside the scheduler's container
#: Run in the scheduler's container (its own Python and Dask: no version to mismatch):
#: waits for the workers, then prints that Python's version as Dask reports it.
JOINED = (
    "import sys; from distributed import Client; "
    f"c = Client({SCHEDULER!r}, timeout=30); c.wait_for_workers({WORKERS}, timeout=60); "
    "print('.'.join(map(str, sys.version_info)))"
)


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_campaign_profile_runs_the_seeds_on_its_workers(xpemu_image: Image, tmp_path: Path) -> None:
    """Up the profile with 2 workers, 40 tiny seeds from here, rows from those workers."""
    dl = Deadline(BUDGET_S)
    port = free_port()
    project = f"xpemu-campaign-{secrets.token_hex(4)}"
    env = {**os.environ, "XPEMU_IMAGE": xpemu_image.tag, "XPEMU_DASK_PORT": str(port)}
    stack = Stack(xpemu_image.compose, project, env, dl, profiles=("campaign",))
    with stack.scenario():  # then down -v, on every path
        with stage("up -d (scheduler, 2 workers)"):
            stack.compose(
                "up", "-d", "--no-build", "--scale", f"dask-worker={WORKERS}",
                "dask-scheduler", "dask-worker",
            )  # fmt: skip
        # Named, the two services come up without hv, pager and guest.
        assert stack.services() == ["dask-scheduler"] + ["dask-worker"] * WORKERS
        scheduler = stack.inspect(stack.cid("dask-scheduler"))
        workers = [stack.inspect(cid) for cid in stack.cids("dask-worker")]
        for c in [scheduler, *workers]:
            assert c["HostConfig"]["CapDrop"] == ["ALL"]
            assert c["HostConfig"]["SecurityOpt"] == ["no-new-privileges:true"]
            assert list(c["NetworkSettings"]["Networks"]) == [f"{project}_campaign"]
        # Only the scheduler's port, only on the host's loopback.
        published = {"8786/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
        assert scheduler["HostConfig"]["PortBindings"] == published
        assert all(not w["HostConfig"]["PortBindings"] for w in workers)
        hosts = {
            net["IPAddress"] for w in workers for net in w["NetworkSettings"]["Networks"].values()
        }
        assert len(hosts) == WORKERS

        with stage("workers joined"):
            their_python = run(
                ["docker", "exec", scheduler["Id"], "python", "-c", JOINED], dl.left(100)
            ).stdout.strip()

        ledger = tmp_path / "campaign.sqlite"
        xpemu = str(Path(sys.executable).with_name("xpemu"))
        argv = [xpemu, "campaign", "--seeds", "0-39", "--scenario", "tiny"]
        argv += ["--scheduler", f"tcp://127.0.0.1:{port}", "--ledger", str(ledger)]
        with stage("xpemu campaign (40 seeds)"):
            # Any warning the client does not handle ends it with a traceback.
            campaign = run(argv, dl.left(120), env={**env, "PYTHONWARNINGS": "error"})
        with sqlite3.connect(ledger) as db:
            rows = db.execute(
                "SELECT seed, verdict, worker FROM runs WHERE kind = 'run' ORDER BY seed"
            ).fetchall()
        assert [seed for seed, _, _ in rows] == list(range(40))
        assert {verdict for _, verdict, _ in rows} == {"passed"}
        # tcp://HOST:PORT of the worker that ran the seed: the containers', both of them
        # (blocks of 5 seeds, 8 blocks on 2 idle workers), not a local cluster's 127.0.0.1.
        assert {worker.removeprefix("tcp://").rsplit(":", 1)[0] for _, _, worker in rows} == hosts

        out, err = campaign.stdout, campaign.stderr
        assert "verdicts: passed 40" in out, out + err
        assert "Traceback" not in err and "Warning" not in err, err
        ours = ".".join(map(str, sys.version_info))  # as Dask's table shows it
        if ours != their_python:  # a host venv against the image: Dask's check, as a note
            assert err.startswith("xpemu campaign: note: the scheduler or its workers"), err
            assert f"| python  | {ours} | {their_python} | {their_python} |" in err, err
        else:
            assert "note:" not in err, err
