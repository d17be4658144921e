"""A session's guest.sock requests: vCPU accesses and the balloon.

An access makes its first attempt in order with the connection's other requests; one that
must wait (a paused vCPU, a full ring) goes on from the resume that unpauses it or as a
task of the session.
"""

from __future__ import annotations

import functools
from typing import Any

from protocol import Errno, Request, RequestError, error_reply, ok_reply

from .domain import Domain
from .domain_guest import DONE, PAUSED, GuestFault
from .session import SessionBase


class GuestRequests(SessionBase):
    """The `_op_<name>` handlers of the guest."""

    # ---------------------------------------------------------------- guest

    def _op_read(self, req: Request) -> None:
        self._start_access(req, "read")

    def _op_write(self, req: Request) -> None:
        self._start_access(req, "write")

    def _start_access(self, req: Request, op: str) -> None:
        domain = self._live()
        args = req.args
        if not domain.in_range(args["gfn"]):
            raise RequestError(f"gfn {args['gfn']} is past nr_gfns", Errno.EINVAL)
        err = domain.claim_vcpu(args["vcpu"])
        if err is Errno.EINVAL:
            raise RequestError(f"vCPU {args['vcpu']} is out of range", err)
        if err is not None:
            raise RequestError(f"vCPU {args['vcpu']} has an access pending", err)
        # The first attempt runs here, in order with the connection's other requests: an
        # access to a resident page is answered at once, and a populate puts its request on
        # the ring without waiting for a task to start. Only a wait needs a task.
        self._attempt(domain, req, op, None)

    def _after_step(
        self, domain: Domain, req: Request, op: str, step: str, data: bytes | None
    ) -> None:
        vcpu = domain.vcpus[req.args["vcpu"]]
        if step == DONE:
            vcpu.busy = False
            self._send(ok_reply(req.id, data=data) if op == "read" else ok_reply(req.id))
        elif step == PAUSED:
            # The retry runs from inside the resume that unpauses the vCPU: its reply goes
            # out before the pager's, with no task switch.
            vcpu.then(functools.partial(self._attempt, domain, req, op), self)
        else:  # a full ring: wait for a slot in a task
            assert self.nursery is not None
            self.nursery.start_soon(self._access, domain, req, op, step)

    def _attempt(self, domain: Domain, req: Request, op: str, outcome: Errno | None) -> None:
        """One attempt of a claimed vCPU's access (`outcome`: why it was unpaused, if)."""
        args = req.args
        try:
            if outcome is not None:
                raise GuestFault(outcome, f"gfn {args['gfn']}: released ({outcome})")
            step, data = domain.access_step(
                args["vcpu"], op, args["gfn"], args["off"], args.get("len", 0), args.get("data")
            )
        except GuestFault as fault:
            domain.vcpus[args["vcpu"]].busy = False
            self._send(error_reply(req.id, fault.errno, fault.msg))
            return
        except Exception:  # a bug of ours must not take the unpausing operation down
            domain.vcpus[args["vcpu"]].busy = False
            self.log.exception("access.crashed", op=op)
            self._send(error_reply(req.id, Errno.EIO, "internal error in hv"))
            return
        self._after_step(domain, req, op, step, data)

    async def _access(self, domain: Domain, req: Request, op: str, first: str) -> None:
        args = req.args
        try:
            data = await domain.access(
                args["vcpu"],
                op,
                args["gfn"],
                args["off"],
                args.get("len", 0),
                args.get("data"),
                first=first,
            )
        except GuestFault as fault:
            self._send(error_reply(req.id, fault.errno, fault.msg))
            return
        except Exception:
            self.log.exception("access.crashed", op=op)
            self._send(error_reply(req.id, Errno.EIO, "internal error in hv"))
            return
        self._send(ok_reply(req.id, data=data) if op == "read" else ok_reply(req.id))

    def _op_decrease_reservation(self, req: Request) -> dict[str, Any]:
        return ok_reply(req.id, results=self._live().decrease_reservation(req.args["gfns"]))

    def _op_increase_reservation(self, req: Request) -> dict[str, Any]:
        return ok_reply(req.id, results=self._live().increase_reservation(req.args["gfns"]))
