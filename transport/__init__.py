"""trio glue shared by hv, pager, guest and stack: connections, clients, servers, logging.

Kept apart from `protocol/` so that the protocol stays free of I/O (`import protocol`
never imports trio).
"""

from .client import Client, open_client, open_unix_client
from .connection import FLUSH_TIMEOUT, Connection, ConnectionClosed, open_connection
from .logs import configure_logging
from .server import serve_unix

__all__ = [
    "FLUSH_TIMEOUT",
    "Client",
    "Connection",
    "ConnectionClosed",
    "configure_logging",
    "open_client",
    "open_connection",
    "open_unix_client",
    "serve_unix",
]
