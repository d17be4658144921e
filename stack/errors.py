"""Why a stack run could not run: the one-line error and how a failed nursery maps to it."""

from __future__ import annotations

from protocol import OpError
from transport import ConnectionClosed

from .procs import Child, StartError, last_line


class StackError(Exception):
    """A one-line reason the stack cannot run (bad input, a child that will not start)."""


def hv_death(hv: Child | None, exc: BaseException) -> BaseException:
    """A lost connection because hv itself died says so, with its status and its log."""
    if (
        isinstance(exc, StackError)
        and exc.args
        and str(exc.args[0]).startswith("lost a connection")
        and hv is not None
        and hv.died_on_its_own is not None
    ):
        return StackError(
            f"hv died during the run (status {hv.died_on_its_own}): "
            f"{last_line(hv.log_path) or 'no output'} (log: {hv.log_path})"
        )
    return exc


def decisive(group: BaseExceptionGroup) -> BaseException:
    """The exception that explains a failed run, out of a nursery's group."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for kind in (KeyboardInterrupt, StackError, StartError, OpError, ConnectionClosed, OSError):
        for exc in leaves:
            if isinstance(exc, kind):
                if isinstance(exc, StackError | KeyboardInterrupt):
                    return exc
                if isinstance(exc, StartError):
                    return StackError(str(exc))
                if isinstance(exc, OpError):
                    return StackError(f"hv refused a control request: {exc}")
                return StackError(f"lost a connection to hv: {exc}")
    return group
