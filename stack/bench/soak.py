"""`xpemu bench --soak MINUTES`: each process's memory over a long run at full load.

A real `xpemu up` (8 vCPUs, uniform pattern over a domain twice its target: every access
may page) runs for MINUTES; the RSS of `xpemu`, hv, the pager, the guest and the guardian
is sampled every `SAMPLE_EVERY_S`, and hv's RSS also less the resident pages of its host
frame pool (the resident pages of every other mapping, from one read of `/proc/PID/smaps`,
the pool being its one mapping of `frames` x 4 KiB; where that cannot be found, its RSS
less the frames in use by hv's `status` at the same instant): `hv-frames`. Those frames
are the guests' memory, which follows each domain's `tot_pages` up and down by megabytes
and is bounded by the host's frames, so a trend in hv's own memory shows in `hv-frames`,
not in the raw RSS of a 5-minute run. Reported per process: RSS after the first minute
(imports, pools and caches warmed up), at the end, and the growth per hour after the first
minute, both end-to-end and as the least-squares slope of every sample after the first
minute (less sensitive to one noisy sample). The goal is under 1 MB per hour. Not part of
the quick bench: it takes as long as asked.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import trio

from protocol import PAGE_SIZE
from transport import open_unix_client

from ..procs import open_children

#: Seconds between two RSS samples.
SAMPLE_EVERY_S: Final = 10.0

#: Samples before this many seconds are start-up, not growth.
WARMUP_S: Final = 60.0

#: The goal: growth per hour per process after the first minute.
GOAL_MB_PER_HOUR: Final = 1.0

#: Full load, as in issue 21: 8 vCPUs, uniform accesses over twice the resident memory.
LOAD_ARGS: Final = ("--vcpus", "8", "--pattern", "uniform")

#: The processes followed, by a marker of their command line.
_MARKERS: Final = {"hv": " -m hv ", "pager": " -m pager ", "guest": " -m guest "}


def rss_bytes(pid: int) -> int | None:
    """Resident set size of `pid` (VmRSS), None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _smaps_rss(pid: int, size: int) -> tuple[int, list[int]] | None:
    """From one read of `/proc/PID/smaps`: the resident bytes of every mapping, and those
    of each mapping of exactly `size` bytes; None once `pid` is gone."""
    total = 0
    found: list[int] = []
    in_pool = False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split(maxsplit=1)[0]
                if "-" in head and not head.endswith(":"):
                    lo, _, hi = head.partition("-")
                    in_pool = int(hi, 16) - int(lo, 16) == size
                elif head == "Rss:":
                    rss = int(line.split()[1]) * 1024
                    total += rss
                    if in_pool:
                        found.append(rss)
    except (OSError, ValueError):
        return None
    return total, found


def pool_rss_bytes(pid: int, size: int) -> int | None:
    """The resident bytes of `pid`'s one mapping of exactly `size` bytes (hv's frame pool:
    an anonymous mmap of every host frame), from `/proc/PID/smaps`; None if there is not
    exactly one. Exact where the count of frames in use is not: `status` and the RSS are
    read a moment apart, during which thousands of frames a second come and go (hv's
    RSS less that count swung by +-0.5 MB between 10-s samples, a 30-minute fit by
    +-1 MB/h)."""
    got = _smaps_rss(pid, size)
    return got[1][0] if got is not None and len(got[1]) == 1 else None


def rss_less_pool_bytes(pid: int, size: int) -> tuple[int, int] | None:
    """The resident bytes of every mapping of `pid` but its one mapping of `size` bytes
    (hv less its frame pool: `hv-frames`), both from the same read of `/proc/PID/smaps`,
    and the pool's; None if there is not exactly one such mapping. `VmRSS` less the pool
    read a moment later mixed two instants of a pool that moves by thousands of pages a
    second (still reported, as `hv-frames-vmrss`)."""
    got = _smaps_rss(pid, size)
    return (got[0] - got[1][0], got[1][0]) if got is not None and len(got[1]) == 1 else None


def children_of(pid: int) -> list[int]:
    """The child PIDs of `pid` (every thread's), none once it is gone."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
    return out


def named_children(pid: int) -> dict[str, int]:
    """hv, pager, guest and guardian among the children of `pid`, by name."""
    found: dict[str, int] = {}
    for kid in children_of(pid):
        try:
            cmd = Path(f"/proc/{kid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "guardian.py" in cmd:
            found["guardian"] = kid
        for name, marker in _MARKERS.items():
            if marker in cmd + " ":
                found[name] = kid
    return found


def slope_per_hour(samples: Sequence[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, bytes) in bytes per hour (0.0 under two samples)."""
    n = len(samples)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    return sum((t - mt) * (v - mv) for t, v in samples) / var * 3600


def summarise(samples: Sequence[tuple[float, int]], warmup_s: float = WARMUP_S) -> dict[str, Any]:
    """The figures of one process from its (seconds since start, RSS bytes) samples."""
    after = [(t, v) for t, v in samples if t >= warmup_s]
    if not after:
        return {"samples": len(samples)}
    (t1, v1), (te, ve) = after[0], after[-1]
    hours = (te - t1) / 3600
    return {
        "samples": len(samples),
        "rss_1min_mb": round(v1 / 1e6, 2),
        "rss_end_mb": round(ve / 1e6, 2),
        "rss_max_mb": round(max(v for _, v in after) / 1e6, 2),
        "growth_mb_per_h": round((ve - v1) / 1e6 / hours, 3) if hours > 0 else 0.0,
        "slope_mb_per_h": round(slope_per_hour(after) / 1e6, 3),
    }


async def run_soak(
    minutes: float,
    work: Path,
    say: Callable[[str], None],
    *,
    every: float = SAMPLE_EVERY_S,
    load: Sequence[str] = LOAD_ARGS,
) -> dict[str, Any]:
    """Run `xpemu up` for `minutes` at full load in `work`; every process's RSS figures."""
    run_dir = work / "run"
    report_path = work / "report.json"
    seconds = minutes * 60
    # The guest's workload fills `seconds`; xpemu keeps up to 14 s for start-up and checks.
    argv = [sys.executable, "-m", "stack", "up", "--no-live", "--run-dir", str(run_dir)]
    argv += ["--duration", f"{seconds + 16:g}", "--report", str(report_path), *load]
    series: dict[str, list[tuple[float, int]]] = {}
    pids: dict[str, set[int]] = {}
    # Started under a guardian (stack/guardian.py): killed, even by SIGKILL, this bench
    # takes its `xpemu up` with it, which stops its own children.
    async with open_children(work) as children:
        xpemu = children.add("xpemu", argv)  # its output in xpemu.out and xpemu.log
        await xpemu.start()
        assert xpemu.proc is not None
        proc = xpemu.proc
        with trio.fail_after(120):
            while not {"hv", "pager", "guest"} <= set(named_children(proc.pid)):
                if proc.returncode is not None:
                    raise RuntimeError(f"xpemu up ended at start-up (see {work})")
                await trio.sleep(0.2)
        t0 = trio.current_time()
        say(f"soak: {minutes:g} min, RSS every {every:g} s ({' '.join(load)}), in {work}")
        next_say = t0 + 60
        async with open_unix_client(str(run_dir / "privcmd.sock"), "control") as ctl:
            await ctl.hello()
            while (now := trio.current_time()) - t0 <= seconds and proc.returncode is None:
                host = (await ctl.call("status"))["host"]
                procs = {"xpemu": proc.pid, **named_children(proc.pid)}
                for name, pid in procs.items():
                    rss = rss_bytes(pid)
                    if rss is None:
                        continue
                    series.setdefault(name, []).append((now - t0, rss))
                    pids.setdefault(name, set()).add(pid)
                    if name == "hv":
                        got = rss_less_pool_bytes(pid, host["frames"] * PAGE_SIZE)
                        if got is None:
                            own = rss - (host["frames"] - host["free"]) * PAGE_SIZE
                            got = (own, rss - own)
                        for key, value in (
                            ("hv-frames", got[0]),
                            ("hv-frames-vmrss", rss - got[1]),
                        ):
                            series.setdefault(key, []).append((now - t0, value))
                            pids.setdefault(key, set()).add(pid)
                if now >= next_say:
                    next_say += 60
                    line = "  ".join(f"{n} {s[-1][1] / 1e6:.1f}" for n, s in series.items())
                    say(f"  {(now - t0) / 60:4.0f} min  RSS MB: {line}")
                await trio.sleep_until(now + every)
        with trio.fail_after(300):
            rc = await proc.wait()
    report: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        report = json.loads(report_path.read_text())
    guest = report.get("guest") or {}
    res: dict[str, Any] = {
        "minutes": minutes,
        "sample_every_s": every,
        "load": list(load),
        "xpemu_exit": rc,
        "run_ok": report.get("ok"),
        "guest_ops": guest.get("ops"),
        "goal_mb_per_h": GOAL_MB_PER_HOUR,
        "processes": {},
    }
    for name, samples in series.items():
        res["processes"][name] = {**summarise(samples), "pids": len(pids[name])}
    return res


def render(res: dict[str, Any]) -> str:
    """The soak figures as a table."""
    lines = [
        f"soak: {res['minutes']:g} min at full load ({' '.join(res['load'])}), xpemu exit "
        f"{res['xpemu_exit']}, run ok {res['run_ok']}, guest ops {res['guest_ops']}",
        f"{'process':<15} {'RSS 1 min':>10} {'RSS end':>10} {'max':>8} "
        f"{'MB/h (ends)':>12} {'MB/h (fit)':>11}  goal < {res['goal_mb_per_h']:g} MB/h",
    ]
    for name, p in res["processes"].items():
        if "rss_1min_mb" not in p:
            lines.append(f"{name:<15} (under a minute of samples)")
            continue
        restarts = f"  ({p['pids']} PIDs)" if p["pids"] > 1 else ""
        lines.append(
            f"{name:<15} {p['rss_1min_mb']:>10.2f} {p['rss_end_mb']:>10.2f} "
            f"{p['rss_max_mb']:>8.2f} {p['growth_mb_per_h']:>12.3f} "
            f"{p['slope_mb_per_h']:>11.3f}{restarts}"
        )
    return "\n".join(lines)


def main(minutes: float, work_dir: Path | None, json_path: Path | None) -> int:
    """`xpemu bench --soak MINUTES`: run, print the table, write the JSON; exit status."""

    def say(text: str) -> None:
        print(text, flush=True)

    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="xpemu-soak-")))
        else:
            work = Path(tempfile.mkdtemp(prefix="soak-", dir=work_dir))  # kept: logs, report
        try:
            res = trio.run(run_soak, minutes, work, say)
        except (RuntimeError, trio.TooSlowError) as exc:
            print(f"xpemu: error: soak: {exc or 'xpemu up did not start'}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("xpemu: error: soak interrupted", file=sys.stderr)
            return 130
    say("")
    say(render(res))
    if json_path is not None:
        try:
            json_path.write_text(json.dumps(res, indent=2) + "\n")
        except OSError as exc:
            print(f"xpemu: error: cannot write {json_path}: {exc.strerror}", file=sys.stderr)
            return 1
    return 0
