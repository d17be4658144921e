"""The store's errors: what a failed store operation raises, with its errno."""

from __future__ import annotations

import errno as _errno


class StoreError(Exception):
    """A store operation failed; `errno` says how (ENOSPC, EIO, ...)."""

    def __init__(self, msg: str, errno: int = _errno.EIO) -> None:
        super().__init__(msg)
        self.errno = errno

    @property
    def full(self) -> bool:
        """True when the disk is full (stop paging out, keep serving page-ins)."""
        return self.errno == _errno.ENOSPC


class StoreLocked(StoreError):
    """Another process holds the store's lock (a hung predecessor?)."""


class ChecksumError(StoreError):
    """A slot's bytes do not match the checksum its record holds."""


def oserror(what: str, exc: OSError) -> StoreError:
    """The StoreError for a failed disk call: its errno kept (ENOSPC stops page-outs)."""
    return StoreError(f"{what} failed: {exc}", exc.errno or _errno.EIO)
