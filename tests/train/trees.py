"""Dataset folders built from real images, for tests of how a layout is read."""

from __future__ import annotations

from pathlib import Path


def make_tree(root: Path, counts: dict[str, int], source: Path) -> None:
    """``counts[name]`` copies of ``source`` in each folder ``root / name`` (``img0.jpeg``, ``img1.jpeg``...)."""
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"img{i}.jpeg").write_bytes(source.read_bytes())
