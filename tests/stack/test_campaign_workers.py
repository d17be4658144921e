"""`xpemu campaign` on worker *processes*: bugs and hangs planted by a Dask WorkerPlugin.

A monkeypatch in the test's own process reaches only an in-process (threads) cluster. On
worker processes, a `WorkerPlugin` registered by the test applies the plant in each
worker when it starts; each block's seeds run in a child forked from the worker
(stack/campaign_child.py), which inherits the plant.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from stack.cli import main

PLANTED = Path(__file__).resolve().parent.parent / "sim" / "planted.py"


def _planted() -> ModuleType:
    spec = importlib.util.spec_from_file_location("campaign_planted", PLANTED)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Seeds the planted hangs stop: one spins (burns CPU, as a livelock does), one blocks.
SPINS, BLOCKS = 3, 5


def _plant_hangs(mp: pytest.MonkeyPatch) -> None:
    import sim

    real = sim.run_seed

    def hanging(seed: int, **kw: Any) -> Any:
        if seed == SPINS:
            while True:  # planted: a livelock
                pass
        if seed == BLOCKS:
            threading.Event().wait()  # planted: blocked for ever, no CPU burnt
        return real(seed, **kw)

    mp.setattr(sim, "run_seed", hanging)


class Plant(WorkerPlugin):
    """Applies one plant in every worker process (undone when the worker closes)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mp: pytest.MonkeyPatch | None = None

    def setup(self, worker: Any) -> None:
        """Patch this worker's modules."""
        self.mp = pytest.MonkeyPatch()
        if self.name == "hangs":
            _plant_hangs(self.mp)
        else:
            _planted().PLANTED[self.name](self.mp)

    def teardown(self, worker: Any) -> None:
        """Undo the patch."""
        if self.mp is not None:
            self.mp.undo()


@pytest.fixture
def processes_cluster() -> Iterator[tuple[str, Client]]:
    """Two single-threaded worker processes on loopback, and a client to register plugins."""
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        ) as cluster,
        Client(cluster) as client,
    ):
        yield cluster.scheduler_address, client


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _rows(ledger: Path) -> list[tuple[int, str, str, str | None]]:
    with sqlite3.connect(ledger) as db:
        return db.execute(
            "SELECT seed, verdict, worker, failure FROM runs WHERE kind = 'run' ORDER BY seed"
        ).fetchall()


@pytest.mark.timeout(240)
def test_a_campaign_of_100_seeds_on_worker_processes_finds_a_planted_bug(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    processes_cluster: tuple[str, Client],
) -> None:
    address, client = processes_cluster
    client.register_plugin(Plant("evict_before_durable"))
    argv = ["campaign", "--seeds", "1-100", "--scenario", "tiny", "--scheduler", address]
    argv += ["--ledger", str(tmp_path / "l.sqlite"), "--block", "1", "--recheck", "0"]
    code, out, err = _run(argv, capsys)
    assert code == 1, out + err
    rows = _rows(tmp_path / "l.sqlite")
    assert [seed for seed, *_ in rows] == list(range(1, 101))  # each seed exactly once
    assert len({worker for _, _, worker, _ in rows}) == 2  # both processes ran seeds
    failing = [seed for seed, verdict, *_ in rows if verdict != "passed"]
    assert {verdict for _, verdict, *_ in rows} <= {"passed", "failed"}
    assert failing, "the planted bug went unnoticed in 100 seeds"
    for seed in failing:
        assert f"replay: xpemu sim --seed {seed} --scenario tiny\n" in out
    # The ledger says what run_seed says, seed by seed (each campaign seed ran in a fresh
    # child, hence a fresh plant here too), for the first few failing and passing seeds.
    import sim

    passing = [seed for seed, verdict, *_ in rows if verdict == "passed"][:3]
    for seed in [*failing[:3], *passing]:
        with pytest.MonkeyPatch.context() as mp:
            _planted().PLANTED["evict_before_durable"](mp)
            assert sim.run_seed(seed, scenario="tiny").ok == (seed in passing), seed


@pytest.mark.timeout(240)
def test_a_hung_seed_is_a_timeout_row_and_the_rest_of_its_block_runs(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    processes_cluster: tuple[str, Client],
) -> None:
    address, client = processes_cluster
    client.register_plugin(Plant("hangs"))
    argv = ["campaign", "--seeds", "1-6", "--scenario", "tiny", "--scheduler", address]
    argv += ["--ledger", str(tmp_path / "l.sqlite"), "--block", "6", "--recheck", "0"]
    argv += ["--seed-timeout", "1", "--json", str(tmp_path / "c.json")]
    code, out, err = _run(argv, capsys)
    assert code == 1, out + err
    rows = {seed: (verdict, failure) for seed, verdict, _, failure in _rows(tmp_path / "l.sqlite")}
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]
    assert {s for s, (v, _) in rows.items() if v == "passed"} == {1, 2, 4, 6}
    assert rows[SPINS][0] == "timeout" and "bound of 1 CPU seconds" in str(rows[SPINS][1])
    assert rows[BLOCKS][0] == "timeout" and "two children: each slept" in str(rows[BLOCKS][1])
    assert "in hanging" in str(rows[BLOCKS][1])  # its stack names the planted wait
    for seed in (SPINS, BLOCKS):
        assert f"seed {seed} TIMEOUT: no verdict within" in out
        assert f"replay: xpemu sim --seed {seed} --scenario tiny\n" in out
    assert "verdicts: passed 4, timeout 2" in out
