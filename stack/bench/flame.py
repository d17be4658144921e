"""A flame graph (SVG) of a py-spy raw profile: collapsed stacks, one `frame;frame;... N`
a line, as `py-spy record --format raw` writes them (`--profile` keeps both files: the raw
one for `python -m stack.bench profile-summary`, the SVG to look at)."""

from __future__ import annotations

import html
import zlib
from pathlib import Path
from typing import Final

#: Width of the drawing and height of one frame, in pixels.
WIDTH: Final = 1200
ROW: Final = 16

#: Frames narrower than this (pixels) are left out (their samples still count above).
MIN_WIDTH: Final = 0.3


class _Node:
    __slots__ = ("children", "count", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.children: dict[str, _Node] = {}


def read_collapsed(path: Path) -> _Node:
    """The call tree of a raw profile (the root counts every sample)."""
    root = _Node("all")
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            root.count += n
            node = root
            for frame in stack.split(";"):
                child = node.children.get(frame)
                if child is None:
                    child = node.children[frame] = _Node(frame)
                child.count += n
                node = child
    return root


def _depth(node: _Node) -> int:
    return 1 + max((_depth(c) for c in node.children.values()), default=0)


def _color(name: str) -> str:
    # Warm colours, the same for the same function in every graph.
    h = zlib.crc32(name.encode())
    return f"rgb({205 + h % 50},{(h >> 8) % 180 + 40},{(h >> 16) % 55})"


def render_svg(root: _Node, title: str) -> str:
    """A flame graph of `root`: callers below, callees above, width by samples."""
    total = max(root.count, 1)
    height = (_depth(root) + 2) * ROW
    scale = WIDTH / total
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}"'
        f' viewBox="0 0 {WIDTH} {height}" font-family="monospace" font-size="11">',
        f'<text x="4" y="{ROW - 4}">{html.escape(title)} ({root.count} samples)</text>',
    ]

    def draw(node: _Node, x: float, depth: int) -> None:
        w = node.count * scale
        if w < MIN_WIDTH:
            return
        y = height - (depth + 1) * ROW
        label = html.escape(node.name)
        pct = 100 * node.count / total
        out.append(
            f"<g><title>{label} ({node.count} samples, {pct:.1f}%)</title>"
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{ROW - 1}"'
            f' fill="{_color(node.name)}"/>'
        )
        chars = int(w / 7)
        if chars >= 3:
            text = node.name if len(node.name) <= chars else node.name[: chars - 2] + ".."
            out.append(f'<text x="{x + 2:.1f}" y="{y + ROW - 4}">{html.escape(text)}</text>')
        out.append("</g>")
        for child in sorted(node.children.values(), key=lambda c: c.name):
            draw(child, x, depth + 1)
            x += child.count * scale

    draw(root, 0.0, 0)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_flamegraph(raw: Path, svg: Path) -> bool:
    """Write the SVG of a raw profile; False (nothing written) if it has no sample."""
    root = read_collapsed(raw)
    if root.count == 0:
        return False
    svg.write_text(render_svg(root, raw.stem))
    return True


__all__ = ["read_collapsed", "render_svg", "write_flamegraph"]
