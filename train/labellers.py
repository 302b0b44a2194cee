"""Where labels come from when the folders right below the dataset are not its classes: file names
(``cat.123.jpg``), the folder holding each image at any depth, or a spreadsheet (``labels_csv.CsvLabels``) — or
when they are, but medclf would read the classes further down (:class:`TopFolders`).

Each is a small object with one question per image — its label, its patient (or None) — and what to do with
images it cannot label, so that reading a dataset (``data.read_named``) does not care which it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from .labels_csv import CsvLabels
from .layout import DatasetError, not_a_class

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NameLabels:
    """Labels from file names, for datasets kept in one folder: ``cat.123.jpg`` → ``cat`` with separator ``.``
    and position 0 (the part of the name without its extension, split on ``separator``)."""

    separator: str = "."
    position: int = 0

    kind = "classes in the file names"

    def label(self, path: Path) -> str | None:
        parts = path.stem.split(self.separator) if self.separator else [path.stem]
        return parts[self.position] if -len(parts) <= self.position < len(parts) and len(parts) > 1 else None

    def group(self, path: Path) -> str | None:
        return None

    def unlabelled(self, root: Path, names: list[str]) -> None:
        """A name without its label part is a mistake in the naming asked for: refused."""
        raise DatasetError(f"{root}: {len(names)} file names have no label part at position {self.position} after "
                           f"splitting on {self.separator!r}, e.g. {names[0]}")


@dataclass(frozen=True)
class FolderLabels:
    """Labels from the folder each image sits in, at any depth (folders of one name are one class), for classes
    filed under folders of their own: HyperKvasir's ``lower-gi-tract/pathological-findings/polyps/`` → ``polyps``,
    ``benign/adenosis/`` → ``adenosis``. An image in no folder below the dataset's has no label: left out."""

    kind = "classes in the folders holding the images"

    def label(self, path: Path) -> str | None:
        return path.parent.name or None

    def group(self, path: Path) -> str | None:
        return None

    def unlabelled(self, root: Path, names: list[str]) -> None:
        _loose_left_out(root, names)


@dataclass(frozen=True)
class TopFolders:
    """Labels from the folders right below the dataset's, as they stand, where medclf reads the classes further
    down (:func:`.layout.class_folders`): LC25000's two organs rather than its five tissue types, HyperKvasir's
    two regions rather than its 23 findings. An image in no folder below the dataset's has no label: left out."""

    kind = "folders right below the dataset's"

    def label(self, path: Path) -> str | None:
        return path.parts[0] if len(path.parts) > 1 and not not_a_class(path.parts[0]) else None

    def group(self, path: Path) -> str | None:
        return None

    def unlabelled(self, root: Path, names: list[str]) -> None:
        _loose_left_out(root, names)


def _loose_left_out(root: Path, names: list[str]) -> None:
    log.warning("%s: %d image(s) in no folder of their own, left out (e.g. %s)", root, len(names), names[0])


Labeller = Union[NameLabels, CsvLabels, FolderLabels, TopFolders]  # where labels come from when not class folders


def recorded(naming: Labeller | None) -> dict | None:
    """How a run's labels were read, for its ``metrics.json``: None for class folders."""
    if isinstance(naming, NameLabels):
        return {"file_names": {"separator": naming.separator, "position": naming.position}}
    if isinstance(naming, FolderLabels):
        return {"leaf_folders": True}
    if isinstance(naming, TopFolders):
        return {"top_folders": True}
    if isinstance(naming, CsvLabels):
        return {"sheet": str(naming.source)}
    return None


def rule_recorded(record: dict | None) -> NameLabels | FolderLabels | TopFolders | None:
    """The rule a run's labels were read by (:func:`recorded`), to read other data of its kind the same way: a
    model trained on ``cat.123.jpg``'s is scored on ``dog.7.jpg``'s without ``--name-labels`` given again. A
    sheet lists its own dataset's files, so it is no rule: None, as for class folders."""
    record = record or {}
    if "file_names" in record:
        return NameLabels(**record["file_names"])
    if record.get("top_folders"):
        return TopFolders()
    return FolderLabels() if record.get("leaf_folders") else None
