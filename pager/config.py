"""The pager's configuration, counters and errors: `PagerConfig`, `PagerStats`, `PagerError`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from protocol import MAX_PAGES_PER_FRAME

from .policy import check_policy


class PagerError(Exception):
    """The pager cannot go on (refused hello, locked store, failed exit): one clear line."""


class ConnectionLost(PagerError):
    """hv closed the connection or it broke: the process exits and is restarted."""


@dataclass
class PagerConfig:
    """Tunables of one pager (the command line's options)."""

    domid: int = 1
    policy: str = "xenpaging"  # a built-in name, or package.module:Class (pager.policy)
    on_exit: str = "pagein"  # or "keep": leave pages out, store durable
    batch: int = 64  # gfns per page-out batch and per page-in batch (<= 255 per map/prep)
    concurrency: int = 4  # page-in batches at once (workers, or started from the reader)
    pipeline: int = 32  # page-out (and proactive page-in) batches on their way at once
    target: int | None = None  # override hv's target (tot_pages to keep at most)
    reserve: int = 0  # free frames kept below the target (the command line's default: 2 batches)
    prefetch: int = 0  # paged neighbours paged in proactively after a guest fault
    mru_size: int | None = None  # xenpaging's MRU list length
    hello_timeout: float = 10.0  # how long EBUSY on hello is retried
    lock_timeout: float = 10.0  # how long to wait for the state directory's lock
    recheck_interval: float = 0.5  # balance at least this often (balloons are silent)
    drain_timeout: float = 60.0  # exit: time allowed to page everything in and detach
    read_attempts: int = 4  # slot reads failing with EIO before the page is declared lost
    balance: bool = True  # follow the target; False: only serve requests (tests, benchmarks)
    #: Seconds the drop worker waits before serving DROP_PAGE requests (0: at once). A
    #: simulation knob (SIM.md's BUGGIFY): it widens the window in which a drop goes stale
    #: (the gfn ballooned in and paged out again before the drop is served), which the
    #: audit in `Drops.serve` must then catch; no command-line option sets it.
    drop_delay: float = 0.0

    def __post_init__(self) -> None:
        if self.on_exit not in ("pagein", "keep"):
            raise ValueError(f"on_exit must be pagein or keep, not {self.on_exit!r}")
        if not 1 <= self.batch <= MAX_PAGES_PER_FRAME + 1:
            raise ValueError(f"batch must be in [1, {MAX_PAGES_PER_FRAME + 1}]")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.pipeline < 1:
            raise ValueError("pipeline must be >= 1")
        if self.prefetch < 0:
            raise ValueError("prefetch must be >= 0")
        if self.target is not None and self.target < 0:
            raise ValueError("target must be >= 0")
        if self.reserve < 0:
            raise ValueError("reserve must be >= 0")
        if self.drop_delay < 0:
            raise ValueError("drop_delay must be >= 0")
        check_policy(self.policy)  # a built-in, or a plug-in class that fits (else ValueError)


@dataclass
class PagerStats:
    """Counters of one pager run (also logged at exit)."""

    epoch: int = 0
    recovered_rows: int = 0
    stale_freed: int = 0
    adopted: int = 0
    lost: int = 0
    redelivered: int = 0
    recovery_s: float = 0.0
    paged_out: int = 0
    paged_in: int = 0
    proactive_in: int = 0
    requests: int = 0
    drops: int = 0
    nominate_busy: int = 0
    evict_busy: int = 0
    prep_enomem: int = 0
    read_errors: int = 0
    checksum_errors: int = 0
    store_full: int = 0
    store_errors: int = 0
    cached_reads: int = 0  # slots read from the page cache (no thread, no disk)
    disk_reads: int = 0  # slots read through a worker thread (not all in the cache)
    inline_pageins: int = 0  # page-in batches started in the connection's reader
    detached: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict."""
        return asdict(self)


__all__ = ["ConnectionLost", "PagerConfig", "PagerError", "PagerStats"]
