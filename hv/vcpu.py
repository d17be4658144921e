"""A guest vCPU: at most one access at a time, paused on at most one request, its pauses timed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from protocol import Errno


class VCpu:
    """One guest vCPU: at most one access at a time, paused on at most one request."""

    __slots__ = (
        "_cont",
        "_outcome",
        "_since",
        "_wake",
        "busy",
        "longest_s",
        "on_resume",
        "owner",
        "paused_s",
        "paused_seq",
        "pauses",
        "vcpu_id",
        "waiting",
    )

    def __init__(
        self, vcpu_id: int, on_resume: Callable[[VCpu, float], None] | None = None
    ) -> None:
        self.vcpu_id = vcpu_id
        # Pauses on requests, timed on trio's clock: how many, total and longest seconds.
        self.pauses = 0
        self.paused_s = 0.0
        self.longest_s = 0.0
        self._since: float | None = None  # trio time the current pause began
        self.on_resume = on_resume  # called with (vcpu, seconds) as each pause ends
        self.busy = False  # an access is pending
        self.paused_seq: int | None = None  # the request this vCPU is paused on
        self.waiting = False  # waits for a free ring slot
        self._wake: trio.Event | None = None
        self._outcome: Errno | None = None
        self._cont: Callable[[Errno | None], None] | None = None
        self.owner: object = None  # who set `_cont` (see `then`)

    def then(self, cont: Callable[[Errno | None], None], owner: object) -> None:
        """Instead of a task waiting: call `cont(outcome)` when unpaused (at once, from
        inside the operation that unpauses: the retried access needs no task switch)."""
        self._cont, self.owner = cont, owner

    def forget(self, owner: object) -> None:
        """`owner` is gone (its connection closed): drop its continuation and free the
        vCPU, as cancelling a waiting task does. The request stays on the ring."""
        if self._cont is not None and self.owner is owner:
            self._cont = self.owner = None
            self.paused_seq = self._wake = None
            self._end_pause()
            self.busy = False

    def pause(self, seq: int) -> None:
        """Pause on request `seq` (at once: `status` shows it, `unpause` may come before
        `wait_unpaused` is awaited)."""
        self.paused_seq = seq
        self._wake = trio.Event()
        self._outcome = None
        self._end_pause()  # a pause never left unended (a re-pause without unpause)
        self.pauses += 1
        self._since = trio.current_time()

    def _end_pause(self) -> None:
        """Count the pause that is ending (if one is open) in the totals."""
        if self._since is None:
            return
        dt = trio.current_time() - self._since
        self._since = None
        self.paused_s += dt
        self.longest_s = max(self.longest_s, dt)
        if self.on_resume is not None:
            self.on_resume(self, dt)

    def stats(self) -> dict[str, Any]:
        """Pauses so far: count, total and longest seconds (an open pause counts so far)."""
        now = trio.current_time() if self._since is not None else 0.0
        open_s = now - self._since if self._since is not None else 0.0
        return {
            "vcpu": self.vcpu_id,
            "paused": self.paused,
            "pauses": self.pauses,
            "paused_s": round(self.paused_s + open_s, 6),
            "longest_s": round(max(self.longest_s, open_s), 6),
        }

    async def wait_unpaused(self) -> Errno | None:
        """Wait until unpaused (None: retry the access) or released (an errno)."""
        assert self._wake is not None, "wait_unpaused without pause"
        try:
            await self._wake.wait()
            return self._outcome
        finally:
            self.paused_seq = None
            self._wake = None
            self._end_pause()

    def unpause(self, outcome: Errno | None = None) -> None:
        """Wake the paused access: None retries it, an errno ends it with that errno."""
        if self._cont is not None:
            cont, self._cont, self.owner = self._cont, None, None
            self.paused_seq = self._wake = None
            self._end_pause()
            cont(outcome)
            return
        if self._wake is not None:
            self._outcome = outcome
            self.paused_seq = None
            self._end_pause()
            self._wake.set()

    @property
    def paused(self) -> bool:
        """Paused on a request or waiting for a slot (what `status` lists)."""
        return self.paused_seq is not None or self.waiting
