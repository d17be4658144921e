"""Access traces for `xpemu policy`: recorded files (XPTRACE2, hv/trace_format.py; the
XPTRACE1 files of before; or a plain .npy of gfns) and the synthetic ones (Zipf, a
shifting hot set, a looping scan)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np

from hv import trace_format
from hv.trace_format import HEADER_SIZE, MAGIC, RECORD_SIZE, V1_MAGIC, V1_RECORD_SIZE

from ..benchlib import hotset_trace, zipf_ranking, zipf_trace

#: One record of an XPTRACE1 file, as numpy reads it (docs/policy.md has the layout).
TRACE_DTYPE: Final = np.dtype(
    [("t_us", "<u4"), ("gfn", "<u4"), ("vcpu", "<u2"), ("write", "u1"), ("outcome", "u1")]
)
assert TRACE_DTYPE.itemsize == V1_RECORD_SIZE

#: One record as `read_records` returns it, from either format: t_us unwrapped.
RECORDS_DTYPE: Final = np.dtype(
    [("t_us", "<u8"), ("gfn", "<u4"), ("vcpu", "<u2"), ("write", "u1"), ("outcome", "u1")]
)

#: One XPTRACE2 record before compression (hv/trace_format.py: gfn, dt_us, vf).
_STORED_DTYPE: Final = np.dtype([("gfn", "<u4"), ("dt_us", "<u4"), ("vf", "<u2")])
assert _STORED_DTYPE.itemsize == RECORD_SIZE

SYNTHETIC: Final = ("zipf", "hotset", "scan")

#: The `.npy` magic: a plain array of gfns is a trace too.
_NPY_MAGIC: Final = b"\x93NUMPY"


class TraceError(ValueError):
    """A trace that cannot be read: one line for the user."""


@dataclass
class Trace:
    """The gfns a guest touched, in order, and what is known about them."""

    name: str
    gfns: list[int]
    nr_gfns: int
    #: gfn of each popularity rank, when the generator knows it (Zipf): A0 needs it.
    ranking: list[int] | None = None
    #: Accesses hv found not resident (recorded traces only): the live run's faults.
    live_faults: int | None = None
    #: Accesses up to the last one hv found not resident (recorded traces only): after it,
    #: the pager held memory below its size no more (`xpemu up`'s end phase pages
    #: everything in and reads it back), so a replay at the target should stop there.
    live_span: int | None = None
    info: dict[str, object] = field(default_factory=dict)

    @property
    def distinct(self) -> int:
        """How many different gfns the trace touches."""
        return len(set(self.gfns))


def synthetic(kind: str, nr_gfns: int, length: int, seed: int = 11) -> Trace:
    """A synthetic trace: `zipf` (s = 0.99, ranks scattered), `hotset` (a quarter of the gfns
    take 90% of accesses, moved every tenth of the trace), or `scan` (a loop over 3/4 of
    the gfns, larger than any memory below that: exact LRU misses every access)."""
    if kind == "zipf":
        return Trace(
            "zipf",
            zipf_trace(nr_gfns, length, 0.99, seed=seed),
            nr_gfns,
            ranking=zipf_ranking(nr_gfns, seed=seed),
        )
    if kind == "hotset":
        gfns = hotset_trace(
            nr_gfns,
            length,
            hot=max(1, nr_gfns // 4),
            shift_every=max(1, length // 10),
            hot_fraction=0.9,
            seed=seed + 1,
        )
        return Trace("hotset", gfns, nr_gfns)
    if kind == "scan":
        return Trace("scan", loop_trace(nr_gfns, length, max(1, nr_gfns * 3 // 4), seed), nr_gfns)
    raise TraceError(f"unknown synthetic trace {kind!r}: one of {', '.join(SYNTHETIC)}")


def loop_trace(nr_gfns: int, length: int, loop: int, seed: int) -> list[int]:
    """A scan that loops over `loop` gfns (scattered over the gfn space), `length` accesses."""
    gfns = random.Random(seed).sample(range(nr_gfns), loop)
    return [gfns[i % loop] for i in range(length)]


def _records(path: Path) -> tuple[np.ndarray, dict[str, object]]:
    """The records of `path` (RECORDS_DTYPE, or plain gfns for .npy) and header facts."""
    try:
        with path.open("rb") as f:
            head = f.read(HEADER_SIZE)
    except OSError as exc:
        raise TraceError(f"cannot read {path}: {exc.strerror}") from None
    if head.startswith(_NPY_MAGIC):
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise TraceError(f"{path}: not a readable .npy file: {exc}") from None
        if arr.dtype.names and "gfn" in arr.dtype.names:
            arr = arr["gfn"]
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise TraceError(
                f"{path}: a .npy trace must be a 1-D integer array of gfns, or records with"
                f" a 'gfn' field; this one is {arr.dtype} of shape {arr.shape}"
            )
        return arr, {}
    if head.startswith(MAGIC):
        return _records_v2(path)
    if not head.startswith(V1_MAGIC) or len(head) < HEADER_SIZE:
        raise TraceError(
            f"{path}: not a trace (no {MAGIC.decode()} header, not .npy): record one with"
            " `xpemu up --record-trace FILE`"
        )
    size = int.from_bytes(head[12:14], "little")
    if int.from_bytes(head[8:10], "little") != 1 or size != V1_RECORD_SIZE:
        raise TraceError(f"{path}: trace version or record size this xpemu does not read")
    body = path.stat().st_size - HEADER_SIZE
    # A trace cut by a killed hv may end in a torn record: the whole ones are kept.
    v1 = np.fromfile(path, TRACE_DTYPE, count=body // V1_RECORD_SIZE, offset=HEADER_SIZE)
    recs = np.empty(len(v1), RECORDS_DTYPE)
    for name in ("gfn", "vcpu", "write", "outcome"):
        recs[name] = v1[name]
    recs["t_us"] = _unwrap(v1["t_us"])
    info: dict[str, object] = {
        "format": V1_MAGIC.decode(),
        "vcpus": int.from_bytes(head[14:16], "little"),
        "nr_gfns": int.from_bytes(head[16:20], "little"),
    }
    return recs, info


def _records_v2(path: Path) -> tuple[np.ndarray, dict[str, object]]:
    try:
        parsed = trace_format.parse(str(path), path.read_bytes())
    except OSError as exc:
        raise TraceError(f"cannot read {path}: {exc.strerror}") from None
    except trace_format.TraceFormatError as exc:
        raise TraceError(str(exc)) from None
    recs = np.empty(sum(b.records for b in parsed.blocks), RECORDS_DTYPE)
    at = 0
    for b in parsed.blocks:
        n = b.records
        # Byte planes back to records: plane k holds byte k of every record.
        rows = np.frombuffer(b.planes, np.uint8).reshape(RECORD_SIZE, n).T.copy()
        block = rows.view(_STORED_DTYPE).reshape(n)
        out = recs[at : at + n]
        out["gfn"] = block["gfn"]
        out["t_us"] = b.t0_us + np.cumsum(block["dt_us"], dtype=np.uint64)
        out["vcpu"] = block["vf"] >> 3
        out["write"] = block["vf"] & 1
        out["outcome"] = (block["vf"] >> 1) & 3
        at += n
    h = parsed.header
    info: dict[str, object] = {
        "format": MAGIC.decode(),
        "vcpus": h.vcpus,
        "nr_gfns": h.nr_gfns,
        "blocks": len(parsed.blocks),
    }
    if parsed.torn is not None:
        info["dropped"] = parsed.torn
    return recs, info


def read_records(path: Path) -> np.ndarray:
    """Every record of the recorded trace `path` (XPTRACE2 or XPTRACE1), RECORDS_DTYPE:
    t_us unwrapped, since recording began (TraceError when it is not a recorded trace)."""
    recs, info = _records(Path(path))
    if not info:
        raise TraceError(f"{path}: a .npy of gfns, not a recorded trace")
    return recs


def read_trace(path: Path) -> Trace:
    """The trace in `path` (TraceError when it is not one, or holds no access)."""
    recs, head = _records(path)
    info: dict[str, object] = {"file": str(path)}
    live, span = None, None
    if recs.dtype == RECORDS_DTYPE:
        nr = head["nr_gfns"]
        assert isinstance(nr, int)
        info.update(head, records=len(recs))
        refused = recs["outcome"] == 2
        info.update(
            refused=int(refused.sum()),
            writes=int(recs["write"].sum()),
            seconds=float(recs["t_us"][-1] / 1e6) if len(recs) else 0.0,
        )
        faulted = recs["outcome"][~refused] == 1
        live = int(faulted.sum())
        span = int(np.flatnonzero(faulted)[-1]) + 1 if live else None
        gfns = recs["gfn"][~refused]  # a refused access (a ballooned gfn) brings nothing in
    else:
        gfns = recs
        nr = int(gfns.max()) + 1 if len(gfns) else 0
    if len(gfns) == 0:
        raise TraceError(f"{path}: the trace holds no access")
    if int(gfns.min()) < 0 or int(gfns.max()) >= nr:
        raise TraceError(f"{path}: gfn {int(gfns.max())} is outside the domain's {nr} gfns")
    return Trace(
        path.name,
        gfns.astype(np.int64).tolist(),
        nr,
        live_faults=live,
        live_span=span if live else None,
        info=info,
    )


def _unwrap(t_us: np.ndarray) -> np.ndarray:
    """`t_us` made monotonic: +2**32 each time the 32-bit counter wrapped."""
    t = t_us.astype(np.int64)
    wraps = np.concatenate(([0], np.cumsum(np.diff(t) < 0)))
    return t + wraps * (1 << 32)
