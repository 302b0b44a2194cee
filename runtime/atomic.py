"""Write files so a reader never sees half of one: write a temporary sibling, then rename it into place."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import cv2
import numpy as np


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **options) -> Iterator[IO]:
    """Open a temporary file beside ``path`` (``options`` go to :func:`open`); on success it replaces ``path``, on
    error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **options) as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path) as handle:
        handle.write(text)


def write_json(path: str | os.PathLike[str], value: object) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def write_image(path: str | os.PathLike[str], bgr: np.ndarray) -> None:
    """Encode an OpenCV (BGR) image in the format its suffix names, and write it atomically."""
    ok, encoded = cv2.imencode(Path(path).suffix, bgr)
    if not ok:
        raise OSError(f"{path}: cannot encode an image as {Path(path).suffix}")
    with atomic_write(path, "wb") as handle:
        handle.write(encoded.tobytes())
