"""Turn the command line's INPUT arguments (files, folders, globs) into an ordered stream of file paths."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm",
                              ".dcm"})


def is_image_file(path: Path) -> bool:
    """An image by its name, as picked from folders: a known extension, and not a hidden file."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files under a folder, recursively, in a stable order; hidden files and folders are skipped."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root, name) for name in sorted(files) if is_image_file(Path(name)))
    return found


def expand_inputs(inputs: Iterable[str]) -> Iterator[str]:
    """Each input as given: a folder becomes its images, a glob its matches, anything else passes through.

    A path that does not exist passes through too, so the classifier reports it as a failed input in its place.
    """
    for item in inputs:
        if os.path.isdir(item):
            yield from (str(path) for path in list_images(item))
        elif not os.path.exists(item) and glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            yield from (m for m in matches if os.path.isfile(m)) if matches else [item]
        else:
            yield item
