"""Every policy on one trace at several memory sizes, beside the references; the table and
the miss-ratio curves (faults per 1,000 accesses against memory size)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pager.policy import policy_label

from ..benchlib import a0_faults, belady_faults
from .reference import arc_faults, lfu_faults, lru_curve
from .replay import replay_faults
from .traces import Trace

#: Reference rows, in table order, and how the table names them.
REFERENCES = {
    "belady": "Belady's optimum",
    "a0": "A0 (online bound)",
    "lru": "exact LRU",
    "arc": "ARC (exact)",
    "lfu": "perfect LFU",
}


@dataclass
class Comparison:
    """Faults of each row (reference or policy) at each memory size."""

    trace: Trace
    sizes: list[int]
    faults: dict[str, list[int]] = field(default_factory=dict)  # row -> faults per size
    lru_all: list[int] = field(default_factory=list)  # exact LRU at every size 0..max

    def per_1000(self, row: str) -> list[float]:
        """Faults per 1,000 accesses of `row` at each size."""
        n = len(self.trace.gfns)
        return [f * 1000 / n for f in self.faults[row]]

    def as_dict(self) -> dict[str, object]:
        """Plain data for --json."""
        return {
            "trace": self.trace.name,
            "accesses": len(self.trace.gfns),
            "nr_gfns": self.trace.nr_gfns,
            "distinct_gfns": self.trace.distinct,
            "live_faults": self.trace.live_faults,
            "sizes": self.sizes,
            "faults": self.faults,
            "faults_per_1000": {r: self.per_1000(r) for r in self.faults},
        }


def compare(
    trace: Trace,
    policies: Sequence[str],
    sizes: Sequence[int],
    *,
    start: str = "empty",
    say: Callable[[str], None] = lambda _: None,
) -> Comparison:
    """Run the references and every policy at every size."""
    cmp = Comparison(trace, list(sizes))
    g = trace.gfns
    cmp.lru_all = lru_curve(g, max(sizes)).tolist()
    cmp.faults["belady"] = [belady_faults(g, c) for c in sizes]
    if trace.ranking is not None:
        cmp.faults["a0"] = [a0_faults(g, c, trace.ranking) for c in sizes]
    cmp.faults["lru"] = [cmp.lru_all[c] for c in sizes]
    cmp.faults["arc"] = [arc_faults(g, c) for c in sizes]
    cmp.faults["lfu"] = [lfu_faults(g, c) for c in sizes]
    say(f"  references done ({', '.join(r for r in REFERENCES if r in cmp.faults)})")
    for p in policies:
        cmp.faults[p] = [replay_faults(p, g, trace.nr_gfns, c, start) for c in sizes]
        say(f"  {policy_label(p)} done")
    return cmp


def row_label(row: str) -> str:
    """How the table and the plot name a row."""
    return REFERENCES.get(row, policy_label(row))


def render_table(cmp: Comparison) -> str:
    """Faults per 1,000 accesses, each with its ratio to Belady's optimum at that size."""
    opt = cmp.per_1000("belady")
    head = ["policy \\ memory", *(f"{c:,}" for c in cmp.sizes)]
    rows = [head]
    for row in cmp.faults:
        vals = cmp.per_1000(row)
        cells = [
            f"{v:.1f}" if row == "belady" else f"{v:.1f} ({v / o:.2f}x)" if o else f"{v:.1f}"
            for v, o in zip(vals, opt, strict=True)
        ]
        rows.append([row_label(row), *cells])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    out = []
    for j, r in enumerate(rows):
        out.append(
            "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
        )
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def plot_curves(cmp: Comparison, path: Path) -> None:
    """Miss-ratio curves to `path` (.png or .svg): one line per row; exact LRU at every size
    from Mattson's pass, the others at the sizes run."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    n = len(cmp.trace.gfns)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    try:
        lo, hi = min(cmp.sizes), max(cmp.sizes)
        step = max(1, (hi - lo) // 400)
        xs = list(range(lo, hi + 1, step))
        ax.plot(xs, [cmp.lru_all[c] * 1000 / n for c in xs], label=row_label("lru"), color="0.4")
        for row in cmp.faults:
            if row == "lru":
                continue
            style = "--" if row in REFERENCES else "-"
            ax.plot(cmp.sizes, cmp.per_1000(row), style, marker="o", ms=3, label=row_label(row))
        ax.set_xlabel("memory size (frames)")
        ax.set_ylabel("faults per 1,000 accesses")
        ax.set_title(
            f"{cmp.trace.name}: {n:,} accesses over {cmp.trace.distinct:,} gfns", fontsize=10
        )
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
