"""A site's own calibration of a deployed model (``medclf calibrate``): its temperature and, for a binary model,
its operating threshold.

Both were fitted on validation images from the place the model was trained. At another site the same ranking
can need another cut, and the same scores can promise more than they keep: the chest X-ray models call normal
films of the test hospital positive far more often than validation promised (specificity 65-71% against
~95%), and say 0.94 on average where they are right 85% of the time. With a few hundred labelled images of its
own, a site fits its temperature and then chooses its threshold by the same rules training used (Youden's J,
or a sensitivity it asks for), writes both into a *copy* of the ONNX file (the temperature as a rescaling of
``probabilities`` inside the graph, the threshold in ``medclf.decision``), and the runtime answers by them.
What they are worth is estimated honestly: fitted on half of the site's images, scored on the other half, over
several random halves (whole patients per half with a group pattern). On the chest preset's model with its
validation temperature (0.41), its test hospital standing in for the site (624 films): calibration error 0.089
→ 0.047 ± 0.012 on the same halves, at a site temperature of 2.2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
from sklearn.model_selection import StratifiedGroupKFold

from medclf.runtime import Classifier
from medclf.runtime.atomic import atomic_write
from medclf.runtime.decision import Decision
from medclf.runtime.modelcard import OUTPUT_NAME, ModelCard

from .data import NameLabels, predict_folder, read_dataset, split_groups
from .evaluate import (MIN_IMAGES_FOR_THRESHOLD, choose_threshold, classification_metrics,
                       expected_calibration_error)
from .temperature import fit_temperature, scaled

HALVES = 5  # random halvings for the estimate; each is scored both ways, so 10 estimates
SUMMARY = ("accuracy", "sensitivity", "specificity", "expected_calibration_error")  # binary models: all four


@dataclass(frozen=True)
class SiteCalibration:
    """The site's temperature and (binary models) threshold, and what they are worth there."""

    temperature: float | None  # None: the site's images cannot tell one (see fit_temperature)
    decision: Decision | None  # binary models only
    before: dict  # every site image, as the model answers now
    estimate: dict | None  # fitted on half the images, scored on the other half: mean and std
    images: int

    def record(self, data: str) -> dict:
        """JSON-ready summary, stored in the calibrated model's card (``metrics.site``) and printed."""
        decision = {"threshold": self.decision.threshold, "rule": self.decision.rule} if self.decision else {}
        return {"data": data, "images": self.images, "temperature": self.temperature, **decision,
                "before": self.before, "estimate": self.estimate}


def calibrate_site(model_path: str | os.PathLike[str], data: str | os.PathLike[str],
                   target_sensitivity: float | None = None, naming: NameLabels | None = None,
                   group_pattern: str | None = None,
                   cache_dir: str | os.PathLike[str] | None = None) -> SiteCalibration:
    """Fit an ONNX model's temperature, and a binary one's threshold, on a site's labelled folder-per-class
    ``data``."""
    classifier = Classifier(model_path)
    card = classifier.card
    if target_sensitivity is not None and len(card.labels) != 2:
        raise ValueError(f"{model_path}: a target sensitivity is for binary models; this one has "
                         f"{len(card.labels)} classes and calls the most probable")
    site = read_dataset(data, card.labels, naming)
    counts = np.bincount(site.labels, minlength=len(card.labels))
    if counts.min() < MIN_IMAGES_FOR_THRESHOLD:
        raise ValueError(f"{data}: {counts.min()} images of {card.labels[int(counts.argmin())]}; calibrating at a "
                         f"site needs at least {MIN_IMAGES_FOR_THRESHOLD} labelled images of each class")
    labels, probabilities, folder = predict_folder(site, card.preprocess, partial(classifier.predict, batch_size=64),
                                                   cache_dir)
    temperature, decision = _fitted(labels, probabilities, card.labels, target_sensitivity)
    if decision is not None:
        decision = replace(decision, rule=f"{decision.rule}, chosen at the site on {len(labels)} images of "
                                          f"{Path(data).name}")
    groups = split_groups(folder, group_pattern) if group_pattern else None
    return SiteCalibration(temperature=temperature, decision=decision, images=len(labels),
                           before=_summary(classification_metrics(labels, probabilities, card.labels, card.decision)),
                           estimate=_split_half(labels, probabilities, card.labels, groups, target_sensitivity))


def _fitted(labels: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...],
            target_sensitivity: float | None) -> tuple[float | None, Decision | None]:
    """The temperature for these images, then — for a binary model — the threshold on the probabilities it
    gives, as training fits them."""
    temperature = fit_temperature(labels, probabilities)
    if temperature is not None:
        probabilities = scaled(probabilities, temperature)
    binary = len(classes) == 2
    return temperature, choose_threshold(labels, probabilities, classes, target_sensitivity) if binary else None


def _split_half(labels: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...], groups: np.ndarray | None,
                target_sensitivity: float | None) -> dict | None:
    """Mean and spread of the metrics of a temperature and threshold fitted on one half and scored on the other,
    with the calibration error the model as it stands makes on those same halves (the error measured on fewer
    images reads higher, so only the same images compare); None when a half would hold too few images of a
    class to fit on."""
    if np.bincount(labels, minlength=len(classes)).min() < 2 * MIN_IMAGES_FOR_THRESHOLD:
        return None
    groups = np.arange(len(labels)) if groups is None else groups
    scores = []
    for seed in range(HALVES):
        halves = StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=seed).split(labels, labels, groups)
        for fit, score in halves:
            temperature, decision = _fitted(labels[fit], probabilities[fit], classes, target_sensitivity)
            scored = probabilities[score] if temperature is None else scaled(probabilities[score], temperature)
            scores.append(_summary(classification_metrics(labels[score], scored, classes, decision))
                          | {"expected_calibration_error_before": expected_calibration_error(labels[score],
                                                                                             probabilities[score])})
    return {key: {"mean": float(np.mean([s[key] for s in scores])), "std": float(np.std([s[key] for s in scores]))}
            for key in scores[0] if key != "threshold"} | {"splits": len(scores)}


def _summary(metrics: dict) -> dict:
    """What a site reads: accuracy and calibration error; sensitivity, specificity and threshold if binary."""
    return {key: metrics[key] for key in (*SUMMARY, "threshold") if key in metrics}


def write_calibrated(model_path: str | os.PathLike[str], out: str | os.PathLike[str], site: SiteCalibration,
                     record: dict) -> None:
    """A copy of the ONNX file that answers with the ``site``'s temperature and threshold, its card carrying the
    site's record (``metrics.site``); written atomically, never over the original (which keeps the training
    site's calibration)."""
    if Path(out).resolve() == Path(model_path).resolve():
        raise ValueError(f"{out}: the calibrated model must be a new file; the original keeps its calibration")
    proto = onnx.load(str(model_path))
    metadata = {prop.key: prop.value for prop in proto.metadata_props}  # other keys than the card's stay
    card = ModelCard.from_metadata(metadata, str(model_path))
    card = replace(card, decision=site.decision or card.decision, metrics=card.metrics | {"site": record})
    if site.temperature is not None:
        proto = with_temperature(proto, site.temperature)
    onnx.helper.set_model_props(proto, metadata | card.to_metadata())
    with atomic_write(out, "wb") as handle:
        handle.write(proto.SerializeToString())


def with_temperature(model: onnx.ModelProto, temperature: float) -> onnx.ModelProto:
    """A copy of ``model`` whose ``probabilities`` are its own rescaled by ``temperature``: softmax(log p / T),
    what dividing its logits by T would give, appended after the output so it works on a file of any precision
    (and on one calibrated before: the names are new each time)."""
    prefix = f"medclf_site{len(model.graph.node)}_"
    unscaled = prefix + "unscaled_probabilities"
    rescaled = onnx.ModelProto()
    rescaled.CopyFrom(model)
    for node in rescaled.graph.node:
        node.output[:] = [unscaled if name == OUTPUT_NAME else name for name in node.output]
        node.input[:] = [unscaled if name == OUTPUT_NAME else name for name in node.input]
    make = onnx.helper.make_node
    rescaled.graph.node.extend([
        make("Clip", [unscaled, prefix + "tiny"], [prefix + "clipped"]),  # log(0) would be -inf
        make("Log", [prefix + "clipped"], [prefix + "log"]),
        make("Mul", [prefix + "log", prefix + "inverse_temperature"], [prefix + "scaled"]),
        make("Softmax", [prefix + "scaled"], [OUTPUT_NAME], axis=-1),
    ])
    rescaled.graph.initializer.extend([
        onnx.numpy_helper.from_array(np.array(1e-12, np.float32), prefix + "tiny"),
        onnx.numpy_helper.from_array(np.array(1 / temperature, np.float32), prefix + "inverse_temperature")])
    onnx.checker.check_model(rescaled)
    return rescaled
