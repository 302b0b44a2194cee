"""Dataset folders built from real images, for tests of how a layout is read."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def make_tree(root: Path, counts: dict[str, int], source: Path) -> None:
    """``counts[name]`` copies of ``source`` in each folder ``root / name`` (``img0.jpeg``, ``img1.jpeg``...)."""
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"img{i}.jpeg").write_bytes(source.read_bytes())


@contextlib.contextmanager
def held_elsewhere(run_dir: Path) -> Iterator[None]:
    """``run_dir`` locked as another process's run holds it (its own descriptor: this process's runs take theirs)."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    held = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield
    finally:
        os.close(held)
