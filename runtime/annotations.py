"""Segmentation masks shipped beside the images they outline, told apart so that a dataset's images are read
without them.

Many public classification datasets come from segmentation work and keep its masks in the class folders: the
breast ultrasound set (BUSI) files ``benign (1)_mask.png`` beside ``benign (1).png``; the COVID-19 radiography
database keeps ``COVID/images/COVID-1.png`` and ``COVID/masks/COVID-1.png``; ISIC names them
``ISIC_0000000_segmentation.png``, QaTa-COV19 ``mask_<name>.png``. Read as images of their class, masks are half
the training set and half of validation — a model judged on outlines.

A name alone does not make a mask (a face-mask dataset's ``with_mask_12.jpg`` is a photo), so a file counts as
one only with its twin: the image it outlines, in the same class folder. Either its name carries a mask word
(``_mask``, ``_mask_1``, ``_segmentation``, ``mask_``, ``_gt``...) and the name without it is an image beside it,
or it sits in a mask folder (``masks/``, ``ManualMask/``, ``ground_truth/``...) and an image of its name (mask
word removed) sits under the class folder outside any mask folder.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from pathlib import Path

_WORD = r"(?:mask|seg|segmentation|gt|groundtruth|ground[ _-]truth)"
_SUFFIXED = re.compile(rf"^(?P<base>.+?)[ _.-]+{_WORD}(?:[ _-]*\d+)?$", re.IGNORECASE)
_PREFIXED = re.compile(rf"^{_WORD}[ _-]+(?P<base>.+)$", re.IGNORECASE)
_MASK_FOLDER = re.compile(r"mask|segmentation|ground[ _-]?truth|^gt$|^seg$", re.IGNORECASE)


def _base(stem: str) -> str | None:
    """The image's name a mask's name was made from, or None for a name without a mask word."""
    match = _SUFFIXED.match(stem) or _PREFIXED.match(stem)
    return match.group("base") if match else None


def _in_mask_folder(path: Path, root: Path) -> bool:
    return any(_MASK_FOLDER.search(part) for part in path.relative_to(root).parts[:-1])


def segmentation_masks(paths: Iterable[Path], root: Path) -> set[Path]:
    """The files among ``paths`` (images under ``root``, one class's folder) that are masks of others there."""
    paths = list(paths)
    in_mask_folder = {path for path in paths if _in_mask_folder(path, root)}
    images = [path for path in paths if path not in in_mask_folder]
    stems_by_folder = {(path.parent, path.stem) for path in images}
    stems_outside = {path.stem for path in images}
    masks = {path for path in images if (path.parent, _base(path.stem)) in stems_by_folder}
    masks |= {path for path in in_mask_folder if path.stem in stems_outside or _base(path.stem) in stems_outside}
    return masks


def dataset_masks(paths: Iterable[Path], root: Path) -> set[Path]:
    """:func:`segmentation_masks` of a folder-per-class dataset's images, twins looked for within each class's
    folder (``root``'s sub-folders; files directly in ``root`` as one more)."""
    by_folder: dict[Path, list[Path]] = {}
    for path in paths:
        parts = path.relative_to(root).parts
        by_folder.setdefault(root / parts[0] if len(parts) > 1 else root, []).append(path)
    return set().union(*(segmentation_masks(files, folder) for folder, files in by_folder.items()))


def masks_said(masks: Collection[Path], root: Path | None = None, done: str = "left out") -> str:
    """The one line saying that ``masks`` (found under ``root``, if one) were not taken for images — one wording
    for training, augmentation, export and ``medclf-run``: ``ROOT: 3 segmentation masks left out (e.g.
    COVID/masks/COVID-0.png): outlines of the images beside them``."""
    example = min(masks)
    where, shown = (f"{root}: ", example.relative_to(root)) if root is not None else ("", example)
    return (f"{where}{len(masks)} segmentation mask{'s' if len(masks) > 1 else ''} {done} (e.g. {shown}): outlines "
            f"of the images beside them")
