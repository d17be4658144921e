"""Run Xen's own xenpaging binary as the stack's pager, over the xenshim libraries.

`make xenpaging` builds the shim (`build/xenshim/`) and unpacks Debian's xenpaging
(`build/xenpaging/`). `python -m stack.xenpaging` takes the python pager's command line
(the stack starts either the same way), then replaces itself with xenpaging, so the pid the
stack signals and SIGKILLs is xenpaging's own. Its paging file lives in the state directory
(inside the run directory); xenpaging truncates it at every start, as in Xen.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Final, NoReturn

#: Where `make xenpaging` puts its output (overridable for an out-of-tree build).
BUILD_DIR: Final = Path(
    os.environ.get("XPEMU_XENPAGING_BUILD") or Path(__file__).resolve().parents[1] / "build"
)
#: The binary inside Debian's xen-utils-4.17, unpacked under build/xenpaging.
BINARY: Final = BUILD_DIR / "xenpaging/usr/lib/xen-4.17/bin/xenpaging"
#: The shim's directory: libxenshim.so and the four soname links.
SHIM_DIR: Final = BUILD_DIR / "xenshim"
SONAMES: Final = (
    "libxenctrl.so.4.17",
    "libxenevtchn.so.1",
    "libxenstore.so.4",
    "libxentoollog.so.1",
)
#: The paging file's name in the state directory.
PAGEFILE: Final = "xenpaging.pagefile"
#: The mem_event ring xenpaging expects: one 4 KiB page of 400-byte entries holds 8.
XEN_RING_SLOTS: Final = 8


def missing() -> str | None:
    """Why xenpaging cannot run here (one line naming `make xenpaging`), or None."""
    if not BINARY.is_file():
        return f"xenpaging binary not found at {BINARY}: run `make xenpaging` first"
    for name in ("libxenshim.so", *SONAMES):
        if not (SHIM_DIR / name).exists():
            return f"xenshim library {SHIM_DIR / name} not found: run `make xenpaging` first"
    return None


def command(pagefile: Path, domid: int, *, verbose: bool = False) -> list[str]:
    """xenpaging's own argv."""
    argv = [str(BINARY), "-d", str(domid), "-f", str(pagefile)]
    return [*argv, "-v"] if verbose else argv


def environment(run_dir: Path, *, hello_timeout: float | None = None) -> dict[str, str]:
    """The environment xenpaging needs: our libraries first, hv's run directory for the shim."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(SHIM_DIR), env.get("LD_LIBRARY_PATH", "")) if p
    )
    env["XENSHIM_RUN_DIR"] = str(run_dir)
    if hello_timeout is not None:
        env["XENSHIM_HELLO_TIMEOUT"] = str(hello_timeout)
    return env


def _fail(msg: str) -> NoReturn:
    print(f"python -m stack.xenpaging: error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> NoReturn:
    """Parse the python pager's options, then exec xenpaging (never returns)."""
    p = argparse.ArgumentParser(prog="python -m stack.xenpaging", description=__doc__)
    p.add_argument("--run-dir", type=Path, required=True, help="hv's run directory")
    p.add_argument("--state-dir", type=Path, required=True, help="where the paging file goes")
    p.add_argument("--domid", type=int, default=1, help="the guest's domain id (1)")
    p.add_argument("--hello-timeout", type=float, help="seconds to retry a refused hello")
    p.add_argument("--verbose", action="store_true", help="xenpaging's -v (every page logged)")
    args = p.parse_args(argv)
    why = missing()
    if why is not None:
        _fail(why)
    if args.domid < 1:
        _fail("xenpaging needs a domain id >= 1")
    try:
        args.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"state directory {args.state_dir} is not usable: {exc.strerror}")
    pagefile = args.state_dir / PAGEFILE
    argv_x = command(pagefile, args.domid, verbose=args.verbose)
    env = environment(args.run_dir, hello_timeout=args.hello_timeout)
    try:
        os.execve(argv_x[0], argv_x, env)
    except OSError as exc:
        _fail(f"cannot run {argv_x[0]}: {exc.strerror}")


if __name__ == "__main__":
    main()
