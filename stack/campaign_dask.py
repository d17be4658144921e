"""The campaign's Dask clients: on a scheduler someone else runs, or on a new local cluster."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

#: The Dask worker resource a stress seed takes one of (local workers offer one each).
STRESS_RESOURCE = "stress"


def _remote_client(address: str, timeout: float) -> Any:
    """A client on the scheduler at `address`. Dask compares the client's Python and
    packages with the scheduler's and the workers' as it connects, and warns of each
    difference: that warning is turned into `version_note` on stderr."""
    from distributed import Client
    from distributed.versions import VersionMismatchWarning

    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", VersionMismatchWarning)
            return Client(address, timeout=timeout)
    finally:
        # Out of catch_warnings: a warning issued again inside it would be caught again.
        for w in caught:
            if issubclass(w.category, VersionMismatchWarning):
                print(version_note(str(w.message)), file=sys.stderr, flush=True)
            else:  # someone else's: as if not caught here
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def version_note(warning: str) -> str:
    """Dask's version-mismatch warning (a title, then a table) as the campaign's note."""
    table = warning.removeprefix("Mismatched versions found").strip()
    return (
        "xpemu campaign: note: the scheduler or its workers run other versions than this "
        "client (Dask's check; the seeds run the workers' own Python and xpemu):\n" + table
    )


def local_client(n: int) -> tuple[Any, Any]:
    """A client on a new `local_cluster(n)`, and the cluster (close both)."""
    from distributed import Client

    cluster = local_cluster(n)
    return Client(cluster), cluster


def local_cluster(n: int) -> Any:
    """A local Dask cluster of `n` single-threaded worker processes on 127.0.0.1, each
    offering one `stress` resource (one stress seed per worker at a time)."""
    from distributed import LocalCluster

    # The local workers are new processes that read their log level from the environment:
    # a cancelled task's warning at Ctrl-C is not news for the user.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    return LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
        # No dashboard, but the scheduler still serves /health and /metrics: on a free
        # loopback port, not on 8787 (taken by another cluster it warns and moves).
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        resources={STRESS_RESOURCE: 1},
    )
