"""Test-time augmentation: a model's probabilities averaged over mirrored and turned copies of each image.

Opt-in (``medclf-run --tta``, ``medclf evaluate --tta``), because it costs one inference per view and pays
only where the image has no up or left. Measured here, argmax calls, no threshold: the packaged blood-cell
model on the 2,487 TEST smears 84.8% → 85.2% (flip) → 86.0% (dihedral), but the no-flags blood model 87.5% →
87.3% (dihedral); a chest X-ray model (no flags) on its 624 test films 89.3% → 88.9% (flip) and 87.3%
(dihedral: a film upside down is not a film), the chest preset's AUC 0.969 → 0.968 (flip). So measure it on
your own validation images (``medclf evaluate --tta``) before serving with it.

The views are taken of the preprocessed uint8 images, after decoding and resizing, so every view is the
exported model's own input: nothing is added to the file, and its verification covers each view.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

VIEWS = {
    "flip": "the image and its mirror image (2 views)",
    "dihedral": "every mirror and quarter turn (8 views; 4 for non-square inputs, which turn into another shape)",
}


def checked(kind: str) -> str:
    """``kind``, if it is one of :data:`VIEWS`; else a ValueError naming them."""
    if kind not in VIEWS:
        raise ValueError(f"unknown test-time augmentation {kind!r}; choose one of {', '.join(VIEWS)}")
    return kind


def views(images: np.ndarray, kind: str) -> list[np.ndarray]:
    """``images`` (``[N, H, W, C]``) as each of ``kind``'s views, the images themselves first."""
    mirrored = images[:, :, ::-1]
    if checked(kind) == "flip":
        return [images, mirrored]
    if images.shape[1] != images.shape[2]:  # half turns keep the shape; quarter turns would not
        return [images, mirrored, images[:, ::-1], images[:, ::-1, ::-1]]
    turns = [images] + [np.rot90(images, k, axes=(1, 2)) for k in range(1, 4)]
    return turns + [turn[:, :, ::-1] for turn in turns]


def averaged(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, kind: str,
             own: np.ndarray | None = None) -> np.ndarray:
    """The mean of ``predict`` over ``kind``'s views of ``images`` (each passed contiguous, as models take them);
    ``own``: ``predict``'s answer for the images as they are, where the caller has it already."""
    others = [predict(np.ascontiguousarray(view)) for view in views(images, kind)[1:]]
    return np.mean([predict(np.ascontiguousarray(images)) if own is None else own, *others], axis=0)
