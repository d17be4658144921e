"""A session's privcmd.sock requests: the pager's, a foreign mapper's and control's."""

from __future__ import annotations

from typing import Any

from protocol import Errno, Request, RequestError, Role, ok_reply

from .domain import Domain
from .session import SessionBase


class PrivcmdRequests(SessionBase):
    """The `_op_<name>` handlers of the pager, mappers and control."""

    # ---------------------------------------------------------------- pager, mapper

    def _op_nominate(self, req: Request) -> dict[str, Any]:
        return ok_reply(req.id, results=self._pager().nominate(req.args["gfns"]))

    def _op_evict(self, req: Request) -> dict[str, Any]:
        return ok_reply(req.id, results=self._pager().evict(req.args["gfns"]))

    def _op_mark_broken(self, req: Request) -> dict[str, Any]:
        return ok_reply(req.id, results=self._pager().mark_broken(req.args["gfns"]))

    def _op_prep(self, req: Request) -> dict[str, Any]:
        domain = self._pager()
        return ok_reply(req.id, results=domain.prep(req.args["gfns"], req.args["pages"]))

    def _op_resume(self, req: Request) -> dict[str, Any]:
        # The accesses this resume retries answer their guests' connections from inside it:
        # each guest connection gets its replies as one write (one wake-up of the guest),
        # not one write per vCPU. The domain holds them (None outside a resume: a resume
        # runs without a checkpoint, so no other session of this hv runs meanwhile).
        domain = self._pager()
        domain.held = {}
        try:
            results = domain.resume(req.args["rsps"])
        finally:
            held, domain.held = domain.held, None
            for uncork in held.values():
                uncork()
        return ok_reply(req.id, results=results)

    def _op_map(self, req: Request) -> dict[str, Any]:
        domain = self._pager()
        # Views of the frames, not copies: the reply is encoded (each page copied once,
        # into the frame) before anything else runs (`SessionBase._handle`).
        pages = domain.map(req.args["gfns"], hold=req.args["hold"], holder=self.holds, copy=False)
        return ok_reply(req.id, pages=pages)

    def _op_unmap(self, req: Request) -> dict[str, Any]:
        return ok_reply(req.id, results=self._pager().unmap(req.args["gfns"], self.holds))

    def _inspected(self, domid: int | None) -> Domain:
        """The domain `audit`/`accessed` look at: control names it (or said it in hello);
        a pager looks at its own."""
        if self.role is Role.control:
            if domid is None and self.domain is not None:
                domid = self.domain.domid
            if domid is None:
                raise RequestError("control must name a domid", Errno.ESRCH)
            return self.hv.domain(domid)
        domain = self._pager()
        if domid is not None and domid != domain.domid:
            raise RequestError("a pager looks at its own domain only", Errno.EINVAL)
        return domain

    def _op_audit(self, req: Request) -> dict[str, Any]:
        args = req.args
        domain = self._inspected(args["domid"])
        self._range(domain, args["start"], args["count"])
        return ok_reply(req.id, **domain.audit(args["start"], args["count"]))

    def _op_accessed(self, req: Request) -> dict[str, Any]:
        args = req.args
        domain = self._inspected(args.get("domid"))
        self._range(domain, args["start"], args["count"])
        return ok_reply(req.id, bits=domain.accessed(args["start"], args["count"], args["clear"]))

    def _op_detach(self, req: Request) -> dict[str, Any]:
        if self.role is Role.control:
            domain = self.hv.domain(req.args["domid"])
            err = domain.detach(None)
        else:
            domain = self._live()
            err = domain.detach(self)
        if err is not None:
            raise RequestError(f"cannot detach domain {domain.domid}'s ring now", err)
        return ok_reply(req.id)

    # ---------------------------------------------------------------- control

    def _op_status(self, req: Request) -> dict[str, Any]:
        return ok_reply(req.id, **self.hv.status())

    def _op_counters(self, req: Request) -> dict[str, Any]:
        return ok_reply(req.id, **self.hv.counters())

    def _op_check(self, req: Request) -> dict[str, Any]:
        return ok_reply(req.id, violations=self.hv.check())

    def _op_set_target(self, req: Request) -> dict[str, Any]:
        self.hv.domain(req.args["domid"]).set_target(req.args["tot_pages"])
        return ok_reply(req.id)

    def _op_domain_create(self, req: Request) -> dict[str, Any]:
        a = req.args
        domain = self.hv.create_domain(
            nr_gfns=a["nr_gfns"], vcpus=a["vcpus"], mmio_gfns=a["mmio_gfns"]
        )
        return ok_reply(req.id, domid=domain.domid)

    def _op_domain_destroy(self, req: Request) -> dict[str, Any]:
        self.hv.destroy_domain(req.args["domid"])
        return ok_reply(req.id)
