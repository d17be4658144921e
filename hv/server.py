"""The hv side of the wire: one session per connection, and the two Unix sockets.

A session reads frames, checks them with `protocol.parse_request`, and runs the operation
against its domain. Everything but guest `read`/`write` completes before the next frame is
read, so replies to those come in request order and an event a request causes follows its
reply. A guest access makes its first attempt in order too; one that must wait (a paused
vCPU, a full ring) goes on as a task of the session (one per vCPU at most), so a vCPU paused
on a page-in does not hold up the others: their replies may come out of order (§3).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import structlog
import trio

from protocol import (
    PAGE_SIZE,
    SOCKET_MODES,
    SOCKET_ROLES,
    VERSION,
    Errno,
    LocalProtocolError,
    RemoteProtocolError,
    Request,
    RequestError,
    Role,
    error_reply,
    ok_reply,
    parse_request,
    request_id,
)
from transport import Connection, ConnectionClosed, open_connection, serve_unix

from .domain import Domain
from .domain_guest import DONE, PAUSED, GuestFault
from .hypervisor import Hypervisor

log = structlog.get_logger("hv.server")

SOCKETS = ("privcmd.sock", "guest.sock")


class _Close(Exception):
    """A request that ends the connection: answer it with `errno`, then close.

    `answer` False sends the reply with id null (a frame that is not a hello before the
    hello is a framing-level error, §2); a refused hello is answered under its own id.
    """

    def __init__(self, errno: Errno, msg: str, *, answer: bool = True) -> None:
        super().__init__(msg)
        self.errno = errno
        self.msg = msg
        self.answer = answer


class _Session:
    """One connection: its role, its domain, the holds it took, its guest accesses."""

    def __init__(self, hv: Hypervisor, conn: Connection, socket: str) -> None:
        self.hv = hv
        self.conn = conn
        self.socket = socket
        self.roles = SOCKET_ROLES[socket]
        self.role: Role | None = None
        self.domain: Domain | None = None
        self.holds: dict[int, int] = {}  # gfn -> count of `map` holds taken here
        self.scope = trio.CancelScope()
        self.nursery: trio.Nursery | None = None
        self.log = log.bind(socket=socket)

    # ---------------------------------------------------------------- Peer (for Domain)

    def send_event(self, msg: dict[str, Any]) -> None:
        """Queue an event to this peer."""
        self._send(msg)

    def fence(self) -> None:
        """A takeover replaced this pager: close its connection."""
        self.log.warning("conn.fenced")
        self.scope.cancel()

    # ---------------------------------------------------------------- plumbing

    def _send(self, msg: dict[str, Any]) -> None:
        held = self.domain.held if self.domain is not None else None
        if held is not None and self.role is Role.guest and id(self) not in held:
            held[id(self)] = self._uncork  # a retried access answered inside a resume
            self.conn.cork()
        try:
            self.conn.send_nowait(msg)
        except LocalProtocolError as exc:  # a reply that does not fit a frame: our bug
            self.log.error("reply.too_large", error=exc.msg)
            if "id" in msg:
                self._send(error_reply(msg["id"], Errno.EIO, "reply too large for a frame"))
        except ConnectionClosed:
            # A peer that does not read its replies is not served further (§2).
            self.log.warning("conn.dropped", reason="peer is not reading or gone")
            self.scope.cancel()

    async def run(self) -> None:
        """Serve requests until the peer closes, breaks the framing, or is dropped."""
        while True:
            try:
                msg: dict[str, Any] | None = await self.conn.receive()
            except ConnectionClosed:
                return
            except RemoteProtocolError as exc:
                self._eproto(exc)
                return
            # Every request already read is served before the next read, and the replies
            # (and events) to this peer go out as one write: one wake-up of the peer. The
            # requests this burst put on the ring go to the pager as one `mem_event` after
            # it (§6: several may share one event): vCPUs that fault together cost the pager
            # one event, one read of the store and one `prep` + `resume`.
            self.conn.cork()
            try:
                while msg is not None:
                    try:
                        self._handle(msg)
                    except _Close as exc:
                        self.log.warning("conn.refused", errno=str(exc.errno), reason=exc.msg)
                        rid = request_id(msg) if exc.answer else None
                        self._send(error_reply(rid, exc.errno, exc.msg))
                        return
                    try:
                        msg = self.conn.receive_buffered()
                    except RemoteProtocolError as exc:
                        self._eproto(exc)
                        return
            finally:
                if self.domain is not None and not self.domain.destroyed:
                    self.domain.flush_events()  # after this burst's replies, before uncork
                self._uncork()

    def _eproto(self, exc: RemoteProtocolError) -> None:
        self.log.warning("conn.eproto", reason=exc.msg)
        self._send(error_reply(None, Errno.EPROTO, exc.msg))

    def _uncork(self) -> None:
        try:
            self.conn.uncork()
        except ConnectionClosed:
            self.log.warning("conn.dropped", reason="peer is not reading or gone")
            self.scope.cancel()

    def _handle(self, msg: dict[str, Any]) -> None:
        if self.role is None and msg.get("op") != "hello":
            raise _Close(Errno.EPROTO, "the first message must be a hello", answer=False)
        try:
            req = parse_request(msg, self.role or Role.control)
        except RequestError as exc:
            self._send(error_reply(request_id(msg), exc.errno, exc.msg))
            return
        try:
            reply = getattr(self, f"_op_{req.op}")(req)
        except RequestError as exc:
            reply = error_reply(req.id, exc.errno, exc.msg)
        except _Close:
            raise
        except Exception:  # a bug of ours must not take the connection or hv down
            self.log.exception("request.crashed", op=req.op)
            reply = error_reply(req.id, Errno.EIO, "internal error in hv")
        if reply is not None:
            self._send(reply)

    def cleanup(self) -> None:
        """The connection is gone: its holds go, and a pager's loss is recorded."""
        if self.domain is None:
            return
        self.domain.release_holds(self.holds)
        for vcpu in self.domain.vcpus:
            vcpu.forget(self)
        if self.role is Role.pager:
            self.domain.pager_lost(self)

    # ---------------------------------------------------------------- checks

    def _live(self) -> Domain:
        assert self.domain is not None
        if self.domain.destroyed:
            raise RequestError(f"domain {self.domain.domid} was destroyed", Errno.ESRCH)
        return self.domain

    def _pager(self) -> Domain:
        """The domain, if this connection is its attached pager (ENODEV after detach)."""
        domain = self._live()
        if self.role is Role.pager and domain.pager is not self:
            raise RequestError("not the attached pager (detached)", Errno.ENODEV)
        return domain

    @staticmethod
    def _range(domain: Domain, start: int, count: int) -> None:
        if start + count > domain.nr_gfns:
            raise RequestError(
                f"range [{start}, {start + count}) is past nr_gfns {domain.nr_gfns}",
                Errno.EINVAL,
            )

    # ---------------------------------------------------------------- hello

    def _op_hello(self, req: Request) -> dict[str, Any] | None:
        if self.role is not None:
            raise RequestError("this connection already said hello", Errno.EINVAL)
        args = req.args
        if args["v"] != VERSION:
            raise _Close(Errno.EPROTO, f"protocol version {args['v']} is not {VERSION}")
        role = args["role"]
        if role not in self.roles:
            raise _Close(Errno.EPERM, f"role {role!r} is not allowed on {self.socket}")
        role = Role(role)
        domid = args["domid"]
        domain: Domain | None
        if role is Role.control and domid is None:
            domain = None
        elif domid is None:
            raise RequestError(f"role {role} needs a domid", Errno.EINVAL)
        else:
            domain = self.hv.domain(domid)
        if role is Role.pager:
            assert domain is not None
            err = domain.attach_pager(self, takeover=args["takeover"])
            if err is not None:
                raise RequestError(f"domain {domid} cannot take this pager now", err)
        self.role, self.domain = role, domain
        self.log = self.log.bind(role=role.value, domid=domid)
        self.log.info("conn.hello")
        fields: dict[str, Any] = {
            "v": VERSION,
            "domid": domid,
            "nr_gfns": domain.nr_gfns if domain else 0,
            "vcpus": len(domain.vcpus) if domain else 0,
            "page_size": PAGE_SIZE,
            "ring_size": domain.ring.size if domain else self.hv.config.ring_size,
            "instance": domain.instance if domain else self.hv.instance,
        }
        if role is Role.pager:
            assert domain is not None
            fields["epoch"] = domain.epoch
            self._send(ok_reply(req.id, **fields))
            domain.greet_pager()
            return None
        return ok_reply(req.id, **fields)

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
        pages = domain.map(req.args["gfns"], hold=req.args["hold"], holder=self.holds)
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


async def serve_connection(hv: Hypervisor, stream: trio.abc.Stream, socket: str) -> None:
    """Serve one connection on `socket` until it closes; nothing the peer sends raises."""
    if socket not in SOCKET_ROLES:
        raise ValueError(f"unknown socket {socket!r}")
    async with open_connection(stream) as conn:
        session = _Session(hv, conn, socket)
        try:
            async with trio.open_nursery() as nursery:
                session.nursery = nursery
                with session.scope:
                    await session.run()
                nursery.cancel_scope.cancel()
        finally:
            session.cleanup()
            session.log.debug("conn.closed")


async def serve(
    hv: Hypervisor,
    run_dir: str,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on both sockets of `run_dir`; started() once both listen; sockets removed on exit."""
    async with trio.open_nursery() as nursery:
        for name in SOCKETS:
            path = os.path.join(run_dir, name)
            handler = functools.partial(hv.serve_stream, socket=name)
            await nursery.start(
                functools.partial(serve_unix, path, handler, mode=SOCKET_MODES[name])
            )
        task_status.started()


__all__ = ["SOCKETS", "serve", "serve_connection"]
