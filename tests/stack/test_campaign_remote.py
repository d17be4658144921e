"""`xpemu campaign --scheduler`: what a scheduler that someone else started can look like.

Its workers may join after the campaign has started (a compose profile just brought up),
and they may run another Python or other packages than the client (a container image
against a host venv), which Dask reports with a warning as the client connects.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import LocalCluster

from stack import campaign
from stack.cli import main


def _kinds(ledger: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(ledger) as db:
        return db.execute("SELECT kind, seed FROM runs ORDER BY kind, seed").fetchall()


def _in_process(n_workers: int) -> LocalCluster:
    """A scheduler and `n_workers` one-thread workers in this process (`scale` adds more)."""
    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=False,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )


@pytest.fixture
def empty_cluster() -> Iterator[LocalCluster]:
    """A scheduler with no worker yet."""
    with _in_process(0) as cluster:
        yield cluster


@pytest.mark.timeout(120)
def test_workers_that_join_after_the_start_run_the_seeds_and_the_rechecks(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    empty_cluster: LocalCluster,
) -> None:
    said = campaign._say
    at_start: list[int] = []

    def say(text: str = "") -> None:  # the worker joins once the campaign has started
        said(text)
        if text.startswith("xpemu campaign: 3 seeds"):
            at_start.append(len(empty_cluster.scheduler_info["workers"]))
            empty_cluster.scale(1)

    monkeypatch.setattr(campaign, "_say", say)
    ledger = tmp_path / "l.sqlite"
    argv = ["campaign", "--seeds", "1-3", "--scenario", "tiny", "--recheck", "1"]
    argv += ["--scheduler", empty_cluster.scheduler_address, "--ledger", str(ledger)]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert at_start == [0]
    assert _kinds(ledger) == [("recheck", s) for s in (1, 2, 3)] + [("run", s) for s in (1, 2, 3)]


@pytest.mark.timeout(120)
def test_other_versions_on_the_scheduler_are_a_note_not_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import distributed.versions

    real = distributed.versions.error_message

    def older_client(scheduler: Any, workers: Any, source: Any, source_name: str = "Client") -> Any:
        if source_name == "Client":  # what the scheduler hears from the client, aged
            source = {**source, "packages": {**source["packages"], "python": "3.0.0.final.0"}}
        return real(scheduler, workers, source, source_name=source_name)

    with _in_process(1) as cluster:
        monkeypatch.setattr(distributed.versions, "error_message", older_client)
        ledger = tmp_path / "l.sqlite"
        argv = ["campaign", "--seeds", "1-2", "--scenario", "tiny", "--recheck", "0"]
        argv += ["--scheduler", cluster.scheduler_address, "--ledger", str(ledger)]
        code = main(argv)  # warnings are errors here: an escaped one fails the campaign
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert err.startswith("xpemu campaign: note: the scheduler or its workers run other versions")
    python = next(line for line in err.splitlines() if line.startswith("| python"))
    assert "3.0.0.final.0" in python
    assert "Mismatched versions found" not in err and "Warning" not in err
    assert _kinds(ledger) == [("run", 1), ("run", 2)]


def test_version_note_keeps_dask_table_without_its_title() -> None:
    warning = "Mismatched versions found\n\n+-----+\n| python | a | b |\n+-----+"
    note = campaign.version_note(warning)
    assert note.splitlines()[1:] == ["+-----+", "| python | a | b |", "+-----+"]
    assert note.startswith("xpemu campaign: note: ")


@pytest.mark.timeout(30)
def test_other_warnings_while_connecting_are_left_as_they_were(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    import distributed
    from distributed.versions import VersionMismatchWarning

    def client(address: str, timeout: float) -> str:
        mismatch = VersionMismatchWarning("Mismatched versions found\n\n| python |")
        warnings.warn(mismatch, stacklevel=1)
        warnings.warn("someone else's", UserWarning, stacklevel=1)
        return f"client of {address}"

    monkeypatch.setattr(distributed, "Client", client)
    with pytest.warns(UserWarning, match="someone else's") as seen:
        assert campaign._remote_client("tcp://here:1", 1.0) == "client of tcp://here:1"
    assert [w.category for w in seen] == [UserWarning]  # once, and not Dask's
    assert capsys.readouterr().err.endswith("):\n| python |\n")
