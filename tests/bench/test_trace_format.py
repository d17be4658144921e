"""XPTRACE2, the compact recorded-trace format (issue 20): round trips, a torn last block
dropped, any other damage refused, and hv's recorder sealing blocks off its event loop."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import hv.trace
from hv.trace import TraceRecorder
from hv.trace_format import (
    BLOCK_HEADER_SIZE,
    HEADER_SIZE,
    MAX_DT_US,
    TraceFormatError,
    decode_python,
    encode_trace,
    parse,
)
from stack.policylab.traces import TraceError, read_records, read_trace

Rec = tuple[int, int, int, bool, int]


@st.composite
def traces(draw: st.DrawFn) -> list[Rec]:
    """(t_us, gfn, vcpu, write, outcome) records, t_us not decreasing, gaps at times larger
    than a record's 32-bit dt holds."""
    n = draw(st.integers(1, 300))
    gaps = draw(
        st.lists(
            st.one_of(st.integers(0, 3000), st.integers(MAX_DT_US - 2, MAX_DT_US + 2)),
            min_size=n,
            max_size=n,
        )
    )
    out, t = [], draw(st.integers(0, 1 << 40))
    for gap in gaps:
        t += gap
        out.append(
            (
                t,
                draw(st.integers(0, (1 << 28) - 1)),
                draw(st.integers(0, 4095)),
                draw(st.booleans()),
                draw(st.integers(0, 2)),
            )
        )
    return out


def as_tuples(path: Path) -> list[Rec]:
    r = read_records(path)
    cols = (r["t_us"], r["gfn"], r["vcpu"], r["write"], r["outcome"])
    return [(int(t), int(g), int(v), bool(w), int(o)) for t, g, v, w, o in zip(*cols, strict=True)]


@given(recs=traces(), per_block=st.integers(1, 70))
def test_any_trace_round_trips_through_both_readers(
    tmp_path_factory: pytest.TempPathFactory, recs: list[Rec], per_block: int
) -> None:
    data = encode_trace(recs, nr_gfns=1 << 28, vcpus=4096, block_records=per_block)
    parsed = parse("t", data)
    assert parsed.torn is None and len(parsed.blocks) >= -(-len(recs) // per_block)
    assert decode_python(parsed) == recs
    path = tmp_path_factory.mktemp("rt") / "t.bin"
    path.write_bytes(data)
    assert as_tuples(path) == recs


def three_blocks() -> tuple[bytes, list[int], list[Rec]]:
    """A small trace of three blocks, and the offset where each block starts."""
    recs = [(i * 37, i * 13 % 200, i % 4, i % 3 == 0, i % 7 == 0) for i in range(60)]
    data = encode_trace([(t, g, v, w, int(o)) for t, g, v, w, o in recs], nr_gfns=200,
                        vcpus=4, block_records=20)  # fmt: skip
    starts, off = [], HEADER_SIZE
    while off < len(data):
        starts.append(off)
        off += BLOCK_HEADER_SIZE + int.from_bytes(data[off : off + 4], "little")
    assert len(starts) == 3 and off == len(data)
    return data, starts, [(t, g, v, w, int(o)) for t, g, v, w, o in recs]


def test_a_torn_last_block_is_dropped_with_a_line_naming_it(tmp_path: Path) -> None:
    data, starts, recs = three_blocks()
    path = tmp_path / "t.bin"
    for cut in range(starts[2] + 1, len(data)):  # every cut inside the last block
        path.write_bytes(data[:cut])
        trace = read_trace(path)
        assert len(trace.gfns) == 40, cut
        assert str(trace.info["dropped"]).startswith(f"{path}: block 2 at byte {starts[2]:,}")
        assert as_tuples(path) == recs[:40]
    path.write_bytes(data[: starts[2]])  # cut at a block boundary: nothing torn
    assert "dropped" not in read_trace(path).info and as_tuples(path) == recs[:40]


def test_any_other_damage_is_refused(tmp_path: Path) -> None:
    data, starts, _ = three_blocks()
    path = tmp_path / "t.bin"
    for at in range(len(data)):  # one flipped byte anywhere, headers included
        path.write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :])
        with pytest.raises(TraceError, match=r"damaged|not a trace|version"):
            read_trace(path)
    # A block cut short in the middle of the file (a block lost from the middle) is
    # damage too: what follows does not start with a block header that checks.
    path.write_bytes(data[: starts[1] + 10] + data[starts[2] :])
    with pytest.raises(TraceError, match=f"block 1 at byte {starts[1]:,}: damaged"):
        read_trace(path)
    with pytest.raises(TraceFormatError, match="no XPTRACE2 header"):
        parse("x", b"XPTRACE3" + data[8:])


def test_policy_command_says_one_line_on_damage_and_warns_on_a_torn_tail(
    tmp_path: Path,
) -> None:
    data, starts, _ = three_blocks()
    bad, torn = tmp_path / "bad.bin", tmp_path / "torn.bin"
    bad.write_bytes(data[: starts[1] + 30] + b"\0" + data[starts[1] + 31 :])
    torn.write_bytes(data[:-5])

    def policy(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stack", "policy", "--trace", str(path), "--only",
             "--policy", "clock", "--sizes", "10", "--plot", str(tmp_path / "c.svg")],
            cwd=tmp_path, capture_output=True, text=True, timeout=100,
        )  # fmt: skip

    res = policy(bad)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"xpemu: error: {bad}: block 1 at byte {starts[1]:,}: damaged (payload crc32 does not"
        " match)"
    ]
    res = policy(torn)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr.strip().splitlines() == [
        f"xpemu: warning: {torn}: block 2 at byte {starts[2]:,} is cut short,"
        f" {len(data) - 5 - starts[2] - BLOCK_HEADER_SIZE:,} of"
        f" {len(data) - starts[2] - BLOCK_HEADER_SIZE:,} bytes (hv killed mid-write?): dropped"
    ]
    assert "40 accesses" in res.stdout


async def test_the_recorder_seals_blocks_in_a_worker_thread_and_on_a_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sealed_in: list[int] = []
    real_seal = hv.trace.seal_block

    def seal(records: bytes, t0_us: int) -> bytes:
        sealed_in.append(threading.get_ident())
        return real_seal(records, t0_us)

    monkeypatch.setattr(hv.trace, "seal_block", seal)
    path = tmp_path / "rec.bin"
    rec = TraceRecorder(str(path), nr_gfns=64, vcpus=2, domid=1, block_records=100,
                        seal_every=0.05)  # fmt: skip
    expected = [(i % 64, i % 2, i % 5 == 0, i % 3) for i in range(250)]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(rec.run)
            for i, (gfn, vcpu, write, outcome) in enumerate(expected):
                rec.record(gfn, vcpu, write, outcome)
                if i == 99:  # a full block: sealed at once, the loop not waiting for it
                    assert rec.blocks == 0
            # 50 records in the open block: sealed when seal_every has passed.
            await rec.wait_sealed()
            assert rec.blocks == 3 and rec.records == 250
            nursery.cancel_scope.cancel()
    assert sealed_in and threading.get_ident() not in sealed_in
    r = read_records(path)  # before close: what a killed hv leaves
    assert len(r) == 250 and read_trace(path).info["blocks"] == 3
    got = list(zip(r["gfn"].tolist(), r["vcpu"].tolist(), r["write"].tolist(),
                   r["outcome"].tolist(), strict=True))  # fmt: skip
    assert got == [(g, v, int(w), o) for g, v, w, o in expected]
    rec.close()
    assert read_trace(path).info["blocks"] == 3  # nothing left to seal


def test_the_trace_cost_benchmark_runs_small(tmp_path: Path) -> None:
    from stack.bench import trace_cost

    rows = trace_cost.size_rows([], 3000)
    assert [name for name, _, _ in rows] == ["zipf", "random"]
    # Compressed: well under XPTRACE1's 12 bytes, and above the header alone.
    assert all(64 < size < 6 * n for _, n, size in rows)
    stalls = trace_cost.stall_rows(65_536, 1)  # one full block each way
    assert sorted(stalls) == sorted(trace_cost.MODES)
    assert all(len(runs) == 1 and runs[0][0] > 0 for runs in stalls.values())
