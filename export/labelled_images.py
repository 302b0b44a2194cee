"""Real labelled images for checking and timing a model: picked evenly from a list, decoded by the runtime.

Kept free of TensorFlow, so that ``medclf benchmark MODEL.onnx`` runs where only the runtime is installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from medclf.runtime.annotations import dataset_masks, masks_said
from medclf.runtime.class_names import class_on_path
from medclf.runtime.inputs import list_images
from medclf.runtime.modelcard import ModelCard
from medclf.runtime.preprocess import ImageError, load_image


def folder_images(folder: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """The images under ``folder`` with the folders each sits in below it, which name its class
    (:func:`load_labelled` reads ``NORMAL/patient12`` as ``NORMAL``, ``fold_0/all`` and ``lung_image_sets/lung_aca``
    as the model's ``all`` and ``lung_aca``, as training reads such layouts), or ``folder``'s own name for files
    directly in it (one class's folder). Segmentation masks beside the images (:mod:`~medclf.runtime.annotations`)
    are left out, as training leaves them out."""
    root = Path(folder)
    images = list_images(root)
    masks = dataset_masks(images, root)
    if masks:
        print(masks_said(masks, root), file=sys.stderr)
    paths = [path for path in images if path not in masks]
    return [str(p) for p in paths], [_folders(path, root) for path in paths]


def _folders(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    return "/".join(parts[:-1]) if len(parts) > 1 else root.resolve().name


def spread(count: int, most: int) -> np.ndarray:
    """Indices of at most ``most`` items evenly spread over ``count`` (lists are sorted by class, so this keeps
    every class in proportion)."""
    return np.unique(np.linspace(0, count - 1, min(most, count)).astype(int))


def load_labelled(paths: list[str], names: list[str], card: ModelCard,
                  kind: str = "verification") -> tuple[np.ndarray, np.ndarray | None]:
    """Decoded images, and their label indices when every file's class — its name, or the first of its folders
    (``fold_0/all``) that stands for one — is one of the model's labels
    (:func:`~medclf.runtime.class_names.matching_class`: ``normal`` for ``NORMAL``, as training reads val/ and
    test/). An unreadable file is skipped with a line naming it; classes that are not the model's are said once,
    and accuracy is then not measured."""
    images, kept = [], []
    for i, path in enumerate(paths):
        try:
            images.append(load_image(path, card.preprocess))
            kept.append(i)
        except ImageError as exc:
            print(f"skipping {exc}", file=sys.stderr)
    if not images:
        raise FileNotFoundError(f"none of the {len(paths)} {kind} images could be read")
    classes = tuple(card.labels)
    matched = {name: class_on_path(name, classes) for name in {names[i] for i in kept}}
    unknown = sorted({name.split("/")[0] for name, label in matched.items() if label is None})
    if unknown:
        print(f"accuracy not measured: {', '.join(unknown[:5])} {'is' if len(unknown) == 1 else 'are'} not among "
              f"the model's classes {', '.join(card.labels)}", file=sys.stderr)
        return np.stack(images), None
    return np.stack(images), np.array([classes.index(matched[names[i]]) for i in kept])
