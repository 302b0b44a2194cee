"""Real labelled images for checking and timing a model: picked evenly from a list, decoded by the runtime.

Kept free of TensorFlow, so that ``medclf benchmark MODEL.onnx`` runs where only the runtime is installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medclf.runtime.inputs import list_images
from medclf.runtime.modelcard import ModelCard
from medclf.runtime.preprocess import ImageError, load_image


def folder_images(folder: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """The images under ``folder`` with their class names: the folder each file sits in."""
    paths = [str(p) for p in list_images(folder)]
    return paths, [Path(p).parent.name for p in paths]


def spread(count: int, most: int) -> np.ndarray:
    """Indices of at most ``most`` items evenly spread over ``count`` (lists are sorted by class, so this keeps
    every class in proportion)."""
    return np.unique(np.linspace(0, count - 1, min(most, count)).astype(int))


def load_labelled(paths: list[str], names: list[str], card: ModelCard) -> tuple[np.ndarray, np.ndarray | None]:
    """Decoded images, and their label indices when every file's class is one of the model's labels."""
    images, kept = [], []
    for i, path in enumerate(paths):
        try:
            images.append(load_image(path, card.preprocess))
            kept.append(i)
        except ImageError:
            continue
    if not images:
        raise FileNotFoundError("none of the verification images could be read")
    kept_names = [names[i] for i in kept]
    labelled = all(name in card.labels for name in kept_names)
    return np.stack(images), np.array([card.labels.index(n) for n in kept_names]) if labelled else None
