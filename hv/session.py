"""One connection to hv: its role and domain, its request loop and the dispatch of requests.

A session reads frames, checks them with `protocol.parse_request`, and runs each request's
`_op_<name>` handler (those of `hv.session_privcmd` and `hv.session_guest`, assembled in
`hv.server`). The replies and events of one burst of requests go out corked, as one write.
"""

from __future__ import annotations

from typing import Any

import structlog
import trio

from protocol import (
    PAGE_SIZE,
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
from transport import Connection, ConnectionClosed

from .domain import Domain
from .hypervisor import Hypervisor

log = structlog.get_logger("hv.server")


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


class SessionBase:
    """A connection's state and request loop (the handlers: see `hv.server._Session`)."""

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
