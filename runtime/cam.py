"""Heatmaps drawn without TensorFlow: normalise a coarse class map to the image and blend it over the image.

Used by ``medclf explain`` (Grad-CAM maps from Keras) and by the runtime for models exported with a ``cam``
output (class activation maps computed inside the ONNX graph), so both draw the same picture.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .atomic import fitted_name, write_image
from .decision import Decision

MIN_OVERLAY_SIDE = 320  # small model inputs are enlarged so a person can see the heatmap
MAX_LABEL_BYTES = 120  # of a heatmap's 255-byte file name, at most this for its class (the image's name shrinks)


def called_maps(maps: np.ndarray, called: np.ndarray, labels: Sequence[str],
                decision: Decision | None) -> np.ndarray:
    """The map each call is drawn from, ``[N, h, w]``, of per-location class scores ``[N, h, w, classes]`` (logits,
    which the model averages over locations): the called class's own — and for a binary model, its score over
    the other's beyond the threshold's log-odds, which is what the call compares. A binary call made below
    p = 0.5 (a screening threshold of 0.2, or a NORMAL call under a threshold of 0.9) had a score negative
    everywhere, and its heatmap came out blank: three in four of a chest model's."""
    rows = np.arange(len(maps))
    if len(labels) != 2:
        return maps[rows, :, :, called]
    margin = binary_margin(maps, labels, decision)
    return np.where((called == positive_index(labels, decision))[:, None, None], margin, -margin)


def positive_index(labels: Sequence[str], decision: Decision | None) -> int:
    """The class a binary model's threshold is for (the second where it has none: argmax, either will do)."""
    return list(labels).index(decision.positive_class) if decision is not None else 1


def binary_margin(scores: np.ndarray, labels: Sequence[str], decision: Decision | None) -> np.ndarray:
    """A binary model's positive-class logit over the other's, less the threshold's log-odds (``scores``' last
    axis the classes): at or above 0 exactly where the positive class is called."""
    positive = positive_index(labels, decision)
    threshold = float(np.clip(decision.threshold if decision is not None else 0.5, 1e-300, 1 - 1e-16))
    return scores[..., positive] - scores[..., 1 - positive] - float(np.log(threshold / (1 - threshold)))


def heatmaps(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Coarse maps ``[N, h, w]`` → ``[N, height, width]`` in 0..1: positive evidence only, each map scaled to its
    own peak (an all-negative map stays 0), resized bilinearly to the image the model saw."""
    positive = np.maximum(maps.astype(np.float32), 0.0)
    peak = positive.max(axis=(1, 2), keepdims=True)
    scaled = np.divide(positive, peak, out=np.zeros_like(positive), where=peak > 0)
    resized = [cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in scaled]
    return np.clip(np.stack(resized), 0.0, 1.0)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The heatmap (JET colours) blended over the image, as BGR uint8 for OpenCV, enlarged to be readable."""
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
    colours = cv2.applyColorMap(np.uint8(255 * heat), cv2.COLORMAP_JET)
    blended = cv2.addWeighted(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), 1 - alpha, colours, alpha, 0)
    scale = max(1, int(np.ceil(MIN_OVERLAY_SIDE / min(blended.shape[:2]))))
    return cv2.resize(blended, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC) if scale > 1 else blended


def overlay_name(path: str, label: str, kind: str, key: bytes | None = None) -> str:
    """``<stem>-<hash of the full path>.<label>.<kind>.png``: files of one name in two folders (``a/scan.jpg``,
    ``b/scan.jpg``), or of one stem (``scan.jpg``, ``scan.png``), get overlays of their own instead of
    overwriting one another's; any name's bytes hash, UTF-8 or not. The stem is shortened where the whole would
    pass the file system's 255 bytes (a 250-character scan name made writing its heatmap fail); the hash still
    tells such names apart. ``key``: what to hash instead of the path (a piped image's pixels: every one is
    ``-``, and each study's heatmap replaced the last one's)."""
    import hashlib  # here, not at the top: only heatmaps need it, and every one-shot run would pay its import

    digest = hashlib.sha1(key if key is not None else os.fsencode(os.path.abspath(path))).hexdigest()[:8]
    label = label.replace("/", "_").replace(os.sep, "_")  # ER+/PR+: one file, not a folder ER+ holding PR+...
    if len(os.fsencode(label)) > MAX_LABEL_BYTES:  # a 240-byte class name left no room: no heatmap was writable
        label = fitted_name(label, f"~{hashlib.sha1(os.fsencode(label)).hexdigest()[:8]}", MAX_LABEL_BYTES)
    return fitted_name(Path(path).stem, f"-{digest}.{label}.{kind}.png")


def write_overlay(path: str | os.PathLike[str], image: np.ndarray, heat: np.ndarray) -> str | None:
    """Write :func:`overlay` at ``path``; None, or why the disk refused it (full, the folder gone mid-run, a
    folder in the name's way) — a lost heatmap is one line for that file, not the end of the run."""
    try:
        write_image(path, overlay(image, heat))
    except OSError as exc:
        return f"heatmap {path} not written ({exc.strerror or exc})"
    return None
