"""The hypervisor's configuration: what `python -m hv` parses into, and tests build directly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from protocol import DEFAULT_RING_SIZE, RingMode

#: Largest ring: a pager's hello redelivers every unanswered request in ONE `mem_event`
#: (PROTOCOL.md §4), and a request costs up to ~64 bytes of msgpack, so 4096 of them fit
#: comfortably in MAX_FRAME (1 MiB).
MAX_RING_SIZE: Final = 4096

#: Largest domain: frame numbers are 32-bit (`array('I')`), and 2**28 gfns is 1 TiB of
#: guest memory, far past anything an emulator on one machine should be asked to hold.
MAX_NR_GFNS: Final = 1 << 28

#: Largest host: frame numbers are stored as unsigned 32-bit with one value reserved.
MAX_HOST_FRAMES: Final = (1 << 32) - 2

#: Most domains at once: keeps the `status` and `counters` replies well inside MAX_FRAME
#: (a domain's status entry is a few hundred bytes).
MAX_DOMAINS: Final = 1024

#: Most lines a `check` reply carries: one broken table can produce a line per gfn.
MAX_VIOLATIONS: Final = 1000

#: Most vCPUs per domain (the wire schema's bound for `domain_create`).
MAX_VCPUS: Final = 4096


def default_host_frames(nr_gfns: int) -> int:
    """Host frames when none are given: the first domain plus a quarter of headroom."""
    return nr_gfns + nr_gfns // 4 + 64


@dataclass(frozen=True, slots=True)
class HvConfig:
    """Domain 1's shape, the host frame pool and the ring's behaviour (PROTOCOL.md §10)."""

    nr_gfns: int = 4096
    vcpus: int = 2
    host_frames: int | None = None
    ring_size: int = DEFAULT_RING_SIZE
    ring_mode: str = RingMode.reattach.value
    mmio_gfns: tuple[int, ...] = ()
    #: Domain 1's initial target; None means its initial `tot_pages` (no paging yet).
    target: int | None = None

    @property
    def frames(self) -> int:
        """The host frame count this configuration asks for."""
        return (
            self.host_frames if self.host_frames is not None else default_host_frames(self.nr_gfns)
        )

    def validate(self) -> None:
        """Raise ValueError with one clear sentence when the configuration cannot work."""
        if not 1 <= self.nr_gfns <= MAX_NR_GFNS:
            raise ValueError(f"nr_gfns must be in [1, {MAX_NR_GFNS}], got {self.nr_gfns}")
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise ValueError(f"vcpus must be in [1, {MAX_VCPUS}], got {self.vcpus}")
        if not 1 <= self.ring_size <= MAX_RING_SIZE:
            raise ValueError(f"ring_size must be in [1, {MAX_RING_SIZE}], got {self.ring_size}")
        if self.ring_mode not in set(RingMode):
            raise ValueError(f"ring_mode must be one of {sorted(RingMode)}, got {self.ring_mode!r}")
        if not 1 <= self.frames <= MAX_HOST_FRAMES:
            raise ValueError(f"host_frames must be in [1, {MAX_HOST_FRAMES}], got {self.frames}")
        if self.frames < self.nr_gfns:
            raise ValueError(
                f"host_frames ({self.frames}) must hold domain 1's {self.nr_gfns} gfns"
            )
        for g in self.mmio_gfns:
            if not 0 <= g < self.nr_gfns:
                raise ValueError(f"mmio gfn {g} is outside [0, {self.nr_gfns})")
        if self.target is not None and self.target < 0:
            raise ValueError(f"target must be >= 0, got {self.target}")
