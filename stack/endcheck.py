"""The end checks of a stack run: the store against hv's audit, page-in, verify every gfn.

After the guest finishes, the pager is killed once more so its store can be checked
against hv's `audit` (invariant 4); a fresh pager recovers and pages everything in on
SIGTERM; every gfn, now resident, is read back through `guest.sock`; the store must then
hold no row for a resident gfn; and hv checks its own invariants.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from guest import Shadow, verify_all
from protocol import MAX_AUDIT_COUNT
from transport import Client, open_unix_client

from .options import StackOptions
from .procs import Child
from .report import FINAL_KILL
from .store_check import StoreCheck, check_store
from .supervisor import PagerSupervisor


@dataclass
class EndResult:
    """What the end checks found (their violations go to the list they were given)."""

    check: dict[str, Any]  # hv's `check` reply
    dom: dict[str, Any]  # hv's final status of domain 1
    store_mid: StoreCheck | None = None
    store_end: StoreCheck | None = None
    final: dict[str, Any] | None = None
    paged_in: bool = False


def load_guest_report(run_dir: Path, rc: int, violations: list[str]) -> dict[str, Any] | None:
    """The guest's own report, or None (and a violation) if it left none."""
    path = run_dir / "guest-report.json"
    try:
        report: dict[str, Any] = json.loads(path.read_text())
        return report
    except (OSError, ValueError):
        violations.append(f"guest exited with status {rc} and no report")
        return None


class EndPhase:
    """The end checks over hv's control connection and the supervised pager."""

    def __init__(
        self,
        opts: StackOptions,
        run_dir: Path,
        control: Client,
        sup: PagerSupervisor,
        pager: Child,
        violations: list[str],
    ) -> None:
        self.o = opts
        self.run_dir = run_dir
        self.control = control
        self.sup = sup
        self.pager = pager
        self.violations = violations

    async def run(self, *, orphaned: bool) -> EndResult:
        """Run every end check; the results (violations appended to the shared list)."""
        o, sup = self.o, self.sup
        store_mid: StoreCheck | None = None
        store_end: StoreCheck | None = None
        final: dict[str, Any] | None = None
        paged_in = False
        if orphaned:
            sup.stopped = True
            await self.pager.stop(grace=3.0)
        elif sup.stopped and not self.pager.running:
            self.violations.append("the pager kept failing to start; nothing paged in")
        else:
            # 1. Kill the pager once more and hold its store against the audit (invariant 4).
            await self._settle_pager()
            sup.restart_gate = trio.Event()  # no restart until the store has been read
            sup.kill(FINAL_KILL)
            with trio.move_on_after(o.start_timeout):
                await sup.wait_down()
            types, frames = await self._audit()
            store_mid = await trio.to_thread.run_sync(
                check_store, self.run_dir / "state", types, frames
            )
            sup.restart_gate.set()
            self.violations += store_mid.violations(resident_rows_allowed=True)
            # 2. A fresh pager recovers from that store; SIGTERM makes it page everything in.
            await self._settle_pager()
            sup.stopped = True
            sup.final_n = len(sup.lives)
            rc = await self.pager.stop(grace=o.end_timeout)
            paged_in = rc == 0
            if not paged_in:
                self.violations.append(f"pager did not page everything in and exit (status {rc})")
            types, frames = await self._audit()
            store_end = await trio.to_thread.run_sync(
                check_store, self.run_dir / "state", types, frames
            )
            self.violations += store_end.violations(resident_rows_allowed=False)
            dom = await self.fresh_dom()
            if dom["paged_pages"]:
                self.violations.append(f"{dom['paged_pages']} gfns still paged out after page-in")
            # 3. Every gfn, now resident, read back through guest.sock.
            final = await self._final_verify()
        check = await self.control.call("check")
        self.violations += [f"hv: {v}" for v in check["violations"]]
        status = await self.fresh_dom()
        return EndResult(check, status, store_mid, store_end, final, paged_in)

    async def _settle_pager(self) -> None:
        """Wait (bounded) until a pager is attached again after the last restart."""
        with trio.move_on_after(self.o.start_timeout):
            while True:
                dom = await self.fresh_dom()
                if dom["pager"]["attached"] and self.pager.running:
                    return
                if self.sup.stopped and not self.pager.running:
                    return
                await trio.sleep(0.05)
        self.violations.append(f"no pager attached within {self.o.start_timeout:g} s at the end")

    async def fresh_dom(self) -> dict[str, Any]:
        """hv's status of domain 1, asked now."""
        status = await self.control.call("status")
        for d in status["domains"]:
            if d["domid"] == 1:
                dom: dict[str, Any] = d
                return dom
        raise AssertionError("hv reports no domain 1")

    async def _audit(self) -> tuple[bytes, bytes]:
        """Types and has-frame bitmap of every gfn, via the control role's `audit`."""
        types, frames = bytearray(), bytearray()
        for start in range(0, self.o.nr_gfns, MAX_AUDIT_COUNT):
            count = min(MAX_AUDIT_COUNT, self.o.nr_gfns - start)
            reply = await self.control.call("audit", domid=1, start=start, count=count)
            types += reply["types"]
            frames += reply["frames"]  # MAX_AUDIT_COUNT is a multiple of 8: bitmaps concatenate
        return bytes(types), bytes(frames)

    async def _final_verify(self) -> dict[str, Any] | None:
        shadow_path = self.run_dir / "guest.shadow"
        if not shadow_path.exists():
            self.violations.append("the guest left no shadow: final verify impossible")
            return None
        shadow = Shadow.load(shadow_path)
        async with open_unix_client(str(self.run_dir / "guest.sock"), "guest") as client:
            await client.hello(1)
            report = await verify_all(
                client, shadow, vcpus=self.o.vcpus, stuck_after=self.o.stuck_after
            )
        if not report.ok:
            self.violations.append(
                f"final verify: {report.integrity_errors} integrity errors, "
                f"{report.unverified} gfns unverified, stuck vCPUs {report.stuck_vcpus}"
            )
        return {
            "verified": report.verified,
            "integrity_errors": report.integrity_errors,
            "unverified": report.unverified,
            "stuck_vcpus": report.stuck_vcpus,
            "latency_ms": report.latency_ms
            if report.latency_ms["max"]
            else report.verify_latency_ms,
            "details": report.error_details[:10],
        }
