"""The hypervisor: the host frame pool, the domains, and the whole-host views."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any

import structlog
import trio

from protocol import Errno, RequestError

from .config import MAX_DOMAINS, MAX_NR_GFNS, MAX_VIOLATIONS, HvConfig
from .domain import Domain
from .frames import NO_FRAME, FramePool

log = structlog.get_logger("hv")


class Hypervisor:
    """Host frames and domains; domain 1 is created from `config`.

    `rng` draws the instance ids (hv's and each domain's), which must differ between runs:
    by default seeded from `os.urandom`; a simulation passes one derived from its seed."""

    def __init__(self, config: HvConfig, *, rng: random.Random | None = None) -> None:
        config.validate()
        self.config = config
        self.rng = rng if rng is not None else random.Random(os.urandom(32))
        self.pool = FramePool(config.frames)
        self.domains: dict[int, Domain] = {}
        self.instance = self._new_instance()  # for control hellos, which name no domain
        self._next_domid = 1
        self.create_domain(
            nr_gfns=config.nr_gfns,
            vcpus=config.vcpus,
            mmio_gfns=config.mmio_gfns,
            target=config.target,
        )

    def create_domain(
        self,
        *,
        nr_gfns: int,
        vcpus: int,
        mmio_gfns: Sequence[int] = (),
        target: int | None = None,
    ) -> Domain:
        """A new domain, all gfns ram_rw (RequestError EINVAL for bad shapes, ENOMEM)."""
        if not 1 <= nr_gfns <= MAX_NR_GFNS:
            raise RequestError(f"nr_gfns must be in [1, {MAX_NR_GFNS}]", Errno.EINVAL)
        bad = [g for g in mmio_gfns if not 0 <= g < nr_gfns]
        if bad:
            raise RequestError(f"mmio gfn {bad[0]} is outside [0, {nr_gfns})", Errno.EINVAL)
        if len(self.domains) >= MAX_DOMAINS:
            raise RequestError(f"hv holds at most {MAX_DOMAINS} domains", Errno.ENOSPC)
        if nr_gfns > self.pool.free:
            raise RequestError(
                f"{nr_gfns} frames wanted, {self.pool.free} free on the host", Errno.ENOMEM
            )
        domid = self._next_domid
        self.domains[domid] = Domain(
            domid,
            self.pool,
            nr_gfns=nr_gfns,
            vcpus=vcpus,
            ring_size=self.config.ring_size,
            ring_mode=self.config.ring_mode,
            mmio_gfns=mmio_gfns,
            target=target,
            instance=self._new_instance(),
        )
        self._next_domid += 1
        return self.domains[domid]

    def _new_instance(self) -> str:
        """A fresh instance id (32 hex digits, as a uuid4's hex), drawn from `rng`."""
        return f"{self.rng.getrandbits(128):032x}"

    def destroy_domain(self, domid: int) -> None:
        """Free everything of a domain (RequestError ESRCH if unknown)."""
        domain = self.domains.pop(domid, None)
        if domain is None:
            raise RequestError(f"no domain {domid}", Errno.ESRCH)
        domain.destroy()

    def domain(self, domid: int | None) -> Domain:
        """A live domain (RequestError ESRCH if unknown)."""
        domain = self.domains.get(domid) if domid is not None else None
        if domain is None:
            raise RequestError(f"no domain {domid}", Errno.ESRCH)
        return domain

    def status(self) -> dict[str, Any]:
        """The control `status` reply's content (PROTOCOL.md §9)."""
        return {
            "host": {"frames": self.pool.nr_frames, "free": self.pool.free},
            "domains": [d.status() for d in self.domains.values()],
        }

    def counters(self) -> dict[str, Any]:
        """Event counters per domain (the `counters` control op)."""
        return {
            "domains": [
                {"domid": d.domid, "counters": dict(d.counters)} for d in self.domains.values()
            ]
        }

    def check(self) -> list[str]:
        """Invariants 1-3 of DESIGN.md over every domain and the host pool; [] when all hold."""
        out: list[str] = []
        nr = self.pool.nr_frames
        owner = bytearray(nr)  # 1 where some gfn's frame is
        used = 0
        for domain in self.domains.values():
            out += domain.violations()
            for gfn, f in enumerate(domain.p2m.frames):
                if f == NO_FRAME:
                    continue
                if f >= nr:
                    out.append(f"domain {domain.domid}: gfn {gfn} has frame {f} past the host")
                    continue
                if owner[f]:
                    out.append(f"frame {f} belongs to two gfns (one is d{domain.domid} {gfn})")
                owner[f] = 1
                used += 1
        mark, freed = self.pool.free_frames()
        seen_free = bytearray(nr)
        for f in freed:
            if f >= mark or seen_free[f]:
                out.append(f"free frame {f} is listed twice or was never handed out")
            elif owner[f]:
                out.append(f"frame {f} is both free and used")
            seen_free[f] = 1
        if any(owner[mark:]):
            out.append("a frame past the never-used mark is in use")
        if used + self.pool.free != nr:
            out.append(f"free ({self.pool.free}) + used ({used}) != host frames ({nr})")
        if len(out) > MAX_VIOLATIONS:
            out[MAX_VIOLATIONS - 1 :] = [f"... and {len(out) - MAX_VIOLATIONS + 1} more"]
        return out

    async def serve_stream(self, stream: trio.abc.Stream, socket: str) -> None:
        """Serve one connection on `socket` ("privcmd.sock" or "guest.sock") until it closes."""
        from .server import serve_connection  # the server builds on this module

        await serve_connection(self, stream, socket)

    def close(self) -> None:
        """Release the host frame pool."""
        self.pool.close()
