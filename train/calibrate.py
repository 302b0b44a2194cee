"""A site's own operating threshold for a deployed binary model (``medclf calibrate``).

The threshold an exported model carries was chosen on validation images from the hospital it was trained on. At
another site the same ranking can need another cut: the chest X-ray models call normal films of the test
hospital positive far more often than validation promised (specificity 65-71% against ~95%). With a few hundred
labelled images of its own, a site chooses its threshold by the same rule training used (Youden's J, or a
sensitivity it asks for), writes it into a *copy* of the ONNX file's ``medclf.decision``, and the runtime calls
by it. What the new threshold is worth is estimated honestly: chosen on half of the site's images, scored on the
other half, over several random halves (whole patients per half with a group pattern).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import onnx
from sklearn.model_selection import StratifiedGroupKFold

from medclf.runtime import Classifier
from medclf.runtime.atomic import atomic_write
from medclf.runtime.decision import Decision
from medclf.runtime.modelcard import ModelCard

from .data import NameLabels, predict_folder, read_dataset, split_groups
from .evaluate import MIN_IMAGES_FOR_THRESHOLD, choose_threshold, classification_metrics

HALVES = 5  # random halvings for the estimate; each is scored both ways, so 10 estimates
SUMMARY = ("accuracy", "sensitivity", "specificity")


@dataclass(frozen=True)
class SiteCalibration:
    """The new operating point and what it is worth at the site."""

    decision: Decision
    before: dict  # every site image at the model's own threshold
    estimate: dict | None  # threshold chosen on half the images, scored on the other half: mean and std
    images: int

    def record(self, data: str) -> dict:
        """JSON-ready summary, stored in the calibrated model's card (``metrics.site``) and printed."""
        return {"data": data, "images": self.images, "threshold": self.decision.threshold,
                "rule": self.decision.rule, "before": self.before, "estimate": self.estimate}


def calibrate_site(model_path: str | os.PathLike[str], data: str | os.PathLike[str],
                   target_sensitivity: float | None = None, naming: NameLabels | None = None,
                   group_pattern: str | None = None,
                   cache_dir: str | os.PathLike[str] | None = None) -> SiteCalibration:
    """Choose a binary ONNX model's threshold on a site's labelled folder-per-class ``data``."""
    classifier = Classifier(model_path)
    card = classifier.card
    if len(card.labels) != 2:
        raise ValueError(f"{model_path}: a site threshold is for binary models; this one has {len(card.labels)} "
                         f"classes and calls the most probable")
    site = read_dataset(data, card.labels, naming)
    counts = np.bincount(site.labels, minlength=2)
    if counts.min() < MIN_IMAGES_FOR_THRESHOLD:
        raise ValueError(f"{data}: {counts.min()} images of {card.labels[int(counts.argmin())]}; a site threshold "
                         f"needs at least {MIN_IMAGES_FOR_THRESHOLD} labelled images of each class")
    labels, probabilities, folder = predict_folder(site, card.preprocess, partial(classifier.predict, batch_size=64),
                                                   cache_dir)
    chosen = choose_threshold(labels, probabilities, card.labels, target_sensitivity)
    decision = replace(chosen, rule=f"{chosen.rule}, chosen at the site on {len(labels)} images of {Path(data).name}")
    groups = split_groups(folder, group_pattern) if group_pattern else None
    return SiteCalibration(decision=decision, images=len(labels),
                           before=_summary(classification_metrics(labels, probabilities, card.labels, card.decision)),
                           estimate=_split_half(labels, probabilities, card.labels, groups, target_sensitivity))


def _split_half(labels: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...], groups: np.ndarray | None,
                target_sensitivity: float | None) -> dict | None:
    """Mean and spread of the metrics of a threshold chosen on one half and scored on the other; None when a half
    would hold too few images of a class to choose on."""
    if np.bincount(labels).min() < 2 * MIN_IMAGES_FOR_THRESHOLD:
        return None
    groups = np.arange(len(labels)) if groups is None else groups
    scores = []
    for seed in range(HALVES):
        halves = StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=seed).split(labels, labels, groups)
        for choose, score in halves:
            decision = choose_threshold(labels[choose], probabilities[choose], classes, target_sensitivity)
            scores.append(_summary(classification_metrics(labels[score], probabilities[score], classes, decision)))
    return {key: {"mean": float(np.mean([s[key] for s in scores])), "std": float(np.std([s[key] for s in scores]))}
            for key in SUMMARY} | {"splits": len(scores)}


def _summary(metrics: dict) -> dict:
    return {key: metrics[key] for key in SUMMARY} | {"threshold": metrics["threshold"]}


def write_calibrated(model_path: str | os.PathLike[str], out: str | os.PathLike[str], decision: Decision,
                     record: dict) -> None:
    """A copy of the ONNX file whose card carries ``decision`` and the site's record (``metrics.site``); written
    atomically, never over the original (which keeps the training site's threshold)."""
    if Path(out).resolve() == Path(model_path).resolve():
        raise ValueError(f"{out}: the calibrated model must be a new file; the original keeps its threshold")
    proto = onnx.load(str(model_path))
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    card = ModelCard.from_metadata(metadata, str(model_path))
    card = replace(card, decision=decision, metrics=card.metrics | {"site": record})
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata | card.to_metadata())
    with atomic_write(out, "wb") as handle:
        handle.write(proto.SerializeToString())
