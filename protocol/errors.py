"""Errors that say whose fault they are, each carrying the errno that goes on the wire."""

from __future__ import annotations

from .constants import Errno


class ProtocolError(Exception):
    """Base of every protocol error: `errno` is the wire name, `msg` is for humans."""

    errno: Errno = Errno.EPROTO

    def __init__(self, msg: str, errno: Errno | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        if errno is not None:
            self.errno = errno

    def __str__(self) -> str:
        return f"{self.errno}: {self.msg}"


class RemoteProtocolError(ProtocolError):
    """The peer broke the framing: the stream cannot be resynchronised, close it (EPROTO)."""

    errno = Errno.EPROTO


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol forbids (for example an oversize frame)."""

    errno = Errno.EPROTO


class RequestError(ProtocolError):
    """A well-framed request that is refused with an errno; the connection stays open."""

    errno = Errno.EINVAL


class OpError(ProtocolError):
    """A reply with `ok: false`, raised on the client side by `Client.call`."""
