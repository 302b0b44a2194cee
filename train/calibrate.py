"""A site's own calibration of a deployed model (``medclf calibrate``): its temperature, a bias per class and,
for a binary model, its operating threshold.

The model's probabilities were calibrated, and its threshold chosen, on validation images from the place it
was trained. At another site the same ranking can need another cut, and the same scores can promise more than
they keep: the chest X-ray models call normal films of the test hospital positive far more often than
validation promised (specificity 65-71% against ~95%), and that hospital sees pneumonia in 62% of its films
where training saw 74%. With a few hundred labelled images of its own, a site fits a temperature and a bias per
class (bias-corrected temperature scaling: the bias is the other prevalence), then chooses its threshold by the
same rules training used (Youden's J, or a sensitivity it asks for); both are written into a *copy* of the
ONNX file (the rescaling inside the graph, after ``probabilities``; the threshold in ``medclf.decision``), and
the runtime answers by them. A site whose labelled images were collected in other proportions than its cases
come in (100 of each class, say) states its prevalence instead: the bias fitted on the images is moved by the
log of the stated share over the images' share (a prior shift; Saerens et al. 2002), and every accuracy,
calibration error and log loss reported weighs each image by that ratio, so it describes the site, not the
collection. What they are worth is estimated honestly: fitted on half of the site's images,
scored on the other half, over several random halves that keep a patient's films (``--group-pattern``), a
patient's sub-folder or an image's augmented copies on one side. Images counted are independent ones: 620
photos that are copies of 25 cells are 25 images. Measured on the chest preset's model, its test hospital
standing in for the site (624 films, 427 patients): log loss 0.315 → 0.218 and calibration error 0.047 →
0.033 against a temperature alone, on the same halves.

A model exported with the ``unfamiliarity`` output (``medclf.export.familiarity``) is also asked how unlike its
training images the site's are: the share beyond 1 is reported (a site whose images are often beyond it is
outside what the model was made for, or images there look otherwise: another scanner, stain or exposure). If
the site says its images are the kind the model is for (``--familiarity-from-site``), the copy's unfamiliarity
is set again on them, depth by depth, so that they lie beyond 1 as often as the training site's held-out images
did (1 in 200): warnings then mean "unlike this site's images" (:mod:`.site_familiarity`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
from sklearn.model_selection import StratifiedGroupKFold

from medclf.export.depth_weights import outputs_with_ratios, with_depth_weights
from medclf.export.files import card_of_file
from medclf.rundir import RunDir, numbered
from medclf.runtime import Classifier
from medclf.runtime.atomic import atomic_write
from medclf.runtime.decision import Decision
from medclf.runtime.modelcard import CAM_NAME, FAMILIARITY_NAME, OUTPUT_NAME, ModelCard, familiarity_site

from .data import ImageFolder, Labeller, predict_folder
from .groups import split_groups
from .identical import seen_in_training
from .evaluate import (MIN_IMAGES_FOR_THRESHOLD, at_prevalence, choose_threshold, classification_metrics,
                       positive_class, prevalence_ratios, prevalence_weights, stated_shares, target_sensitivity_of)
from .plots import plot_reliability
from .site_familiarity import SITE_PREFIX, SiteFamiliarity, site_description, site_familiarity
from .splits import read_labelled, recorded_split
from .temperature import fit_bias_corrected, fit_temperature, scaled

log = logging.getLogger(__name__)

HALVES = 5  # random halvings for the estimate; each is scored both ways, so 10 estimates
BALANCED = 1.1  # a site whose classes' image counts are within this ratio looks collected, not consecutive
SUMMARY = ("accuracy", "sensitivity", "specificity", "expected_calibration_error", "log_loss")  # binary: all five


@dataclass(frozen=True)
class SiteCalibration:
    """The site's temperature, bias per class and (binary models) threshold, and what they are worth there."""

    temperature: float | None  # None (and no bias): the site's images cannot tell one (see fit_bias_corrected)
    bias: dict[str, float] | None  # per class, added to log p / temperature before the softmax
    decision: Decision | None  # binary models only
    before: dict  # every site image, as the model answers now
    estimate: dict | None  # fitted on half the images, scored on the other half: mean and std
    images: int
    prevalence: dict[str, dict[str, float]] | None = None  # "stated" and "images" shares per class, if stated
    familiarity: SiteFamiliarity | None = None  # a model with the unfamiliarity output only

    def record(self, data: str) -> dict:
        """JSON-ready summary, stored in the calibrated model's card (``metrics.site``) and printed."""
        decision = {"threshold": self.decision.threshold, "rule": self.decision.rule} if self.decision else {}
        stated = {"prevalence": self.prevalence} if self.prevalence else {}
        familiarity = {"familiarity": self.familiarity.record()} if self.familiarity else {}
        return {"data": data, "images": self.images, "temperature": self.temperature, "bias": self.bias, **decision,
                **stated, **familiarity, "before": self.before, "estimate": self.estimate}


def calibrate_site(model_path: str | os.PathLike[str], data: str | os.PathLike[str],
                   target_sensitivity: float | None = None, naming: Labeller | None = None,
                   group_pattern: str | None = None, group_copies: bool | None = None,
                   cache_dir: str | os.PathLike[str] | None = None,
                   picture: str | os.PathLike[str] | None = None, class_bias: bool = True,
                   prevalence: dict[str, float] | None = None, familiarity_from_site: bool = False,
                   own_rule: bool = True) -> SiteCalibration:
    """Fit an ONNX model's temperature and class bias, and a binary one's threshold, on a site's labelled
    folder-per-class ``data``. Files of one patient (``group_pattern``) or copies of one image (``group_copies``;
    None: looked for, as training does) count as one image and stay on one side of the estimate's halves. With
    ``picture``, draws there the site's reliability curves as the model stands and calibrated (each image by
    the scaling fitted on the half it is not in), when there are enough images for halves.

    The class bias takes the site's prevalence from the proportions its labelled images come in: right for a
    consecutive series of cases, wrong for a collection assembled to hold so many of each class. For those,
    ``prevalence`` states the site's share of some or all classes (see :func:`stated_shares`), or without
    ``class_bias`` only the temperature is fitted (a balanced-looking site is warned about).

    A model with the unfamiliarity output is asked how unlike its training images the site's are
    (:func:`site_familiarity`); ``familiarity_from_site`` takes them as the reference instead. Without a
    ``target_sensitivity``, a binary model's threshold is chosen by its own rule (the sensitivity it was chosen
    for, else Youden's J); ``own_rule`` False: by Youden's J whatever it was."""
    classifier = Classifier(model_path)
    card = classifier.card
    if target_sensitivity is None and own_rule:  # a screening model was moved to Youden's J, silently
        target_sensitivity = target_sensitivity_of(card.decision)
    if (earlier := card.metrics.get("site")) is not None:
        log.warning("%s is already calibrated, at %s: calibrating it again fits on top of that calibration and its "
                    "card keeps only this site's record — calibrate the file it was made from instead", model_path,
                    earlier.get("data_path") or earlier.get("data"))
    if familiarity_from_site and not classifier.says_unfamiliar:
        raise ValueError(f"{model_path}: exported without the unfamiliarity output, so there is no familiarity to "
                         "take from the site (medclf export adds it by default since 2026-12-06)")
    if target_sensitivity is not None and len(card.labels) != 2:
        raise ValueError(f"{model_path}: a target sensitivity is for binary models; this one has "
                         f"{len(card.labels)} classes and calls the most probable")
    if prevalence and not class_bias:
        raise ValueError("a stated prevalence moves the class bias, so it needs one: drop --no-class-bias")
    run = RunDir.of_export(card.source)
    site = read_labelled(data, card.labels, naming, run, fitting=True)
    counts = np.bincount(site.labels, minlength=len(card.labels))
    _enough(counts, card.labels, data)
    if run is not None and run.trained_by_medclf:
        seen_in_training(site, recorded_split(run, "train"), recorded_split(run, "val"), "site",
                         "fitted on them, the calibration learns the training site again, not this one")
    shares = stated_shares(prevalence, card.labels, counts) if prevalence else None
    if class_bias and shares is None and counts.max() <= BALANCED * counts.min():
        log.warning("%s holds as many images of each class (%d-%d): the class bias takes them as the site's "
                    "prevalence; if cases do not come in these proportions there, state it (--prevalence) or "
                    "fit the temperature alone (--no-class-bias)", data, counts.min(), counts.max())
    fit = _fit_for(class_bias, shares)
    labels, probabilities, levels, folder = _site_outputs(classifier, site, cache_dir)
    _enough(np.bincount(labels, minlength=len(card.labels)), card.labels, data)  # the readable ones, counted again
    familiarity = None if levels is None else site_familiarity(levels, card, familiarity_from_site, data)
    groups = split_groups(folder, group_pattern, group_copies, naming)
    if groups is not None:
        _enough(_sources(labels, groups, len(card.labels)), card.labels, data, grouped=True)
    scaling, decision = _fitted(labels, probabilities, card.labels, target_sensitivity, fit)
    if decision is not None:
        decision = replace(decision, rule=f"{decision.rule}, chosen at the site on {len(labels)} images of "
                                          f"{Path(data).name}")
    temperature, bias = scaling or (None, None)
    estimate, cross_fitted = _split_half(labels, probabilities, card.labels, groups, target_sensitivity, fit, shares)
    if picture is not None and cross_fitted is not None:
        _draw(picture, labels, probabilities, cross_fitted, card.labels, shares, Path(data).name)
    return SiteCalibration(temperature=temperature, decision=decision, images=len(labels),
                           bias=None if bias is None else dict(zip(card.labels, map(float, bias))),
                           before=_site_summary(labels, probabilities, card.labels, card.decision, shares),
                           estimate=estimate, prevalence=_prevalence_record(shares, counts, card.labels),
                           familiarity=familiarity)


def _site_outputs(classifier: Classifier, site: ImageFolder, cache_dir: str | os.PathLike[str] | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, ImageFolder]:
    """Labels and probabilities of every readable site image, each image's per-depth unfamiliarity ratios from
    the same pass where the file has the output (else None), and the images kept."""
    score = outputs_with_ratios(classifier.model_path) if classifier.says_unfamiliar else \
        partial(classifier.predict, batch_size=64)
    labels, scores, folder = predict_folder(site, classifier.card.preprocess, score, cache_dir)
    probabilities, levels = np.split(scores, [len(classifier.labels)], axis=1)
    return labels, probabilities, levels if classifier.says_unfamiliar else None, folder


def _fit_for(class_bias: bool, shares: np.ndarray | None) -> Fit:
    """The scaling to fit: temperature alone, with the class bias, or with the bias moved to a stated prevalence."""
    if not class_bias:
        return _temperature_only
    return fit_bias_corrected if shares is None else partial(_fit_at_prevalence, shares=shares)


def _prevalence_record(shares: np.ndarray | None, counts: np.ndarray, classes: tuple[str, ...]) -> dict | None:
    """The stated shares beside the site images' own, for the card and the printout."""
    if shares is None:
        return None
    return {"stated": dict(zip(classes, map(float, shares))),
            "images": dict(zip(classes, map(float, counts / counts.sum())))}


def _fit_at_prevalence(labels: np.ndarray, probabilities: np.ndarray, shares: np.ndarray) -> Scaling | None:
    """:func:`fit_bias_corrected`'s answer on these images, its bias moved from their class proportions to
    ``shares``: what the same scaling would have found on images coming in the site's proportions."""
    scaling = fit_bias_corrected(labels, probabilities)
    if scaling is None:
        return None
    bias = scaling[1] + np.log(prevalence_ratios(labels, shares))
    return scaling[0], np.round(bias - bias[0], 4)


def _draw(picture: str | os.PathLike[str], labels: np.ndarray, probabilities: np.ndarray, cross_fitted: np.ndarray,
          classes: tuple[str, ...], shares: np.ndarray | None, data: str) -> None:
    """The site's reliability curves as the model stands and calibrated, weighted to a stated prevalence."""
    binary = positive_class(classes) if len(classes) == 2 else None
    title = f"at {data}: {len(labels)} images" + (" weighted to the stated prevalence" if shares is not None else "")
    plot_reliability(labels, {"as the model stands": probabilities, "calibrated (fitted on the other half)":
                              cross_fitted}, classes, picture, title, binary,
                     None if shares is None else prevalence_weights(labels, shares))


def _sources(labels: np.ndarray, groups: np.ndarray, classes: int) -> np.ndarray:
    """Independent images per class: each group (patient, source image) with files of the class counted once."""
    return np.array([len(np.unique(groups[labels == label])) for label in range(classes)])


def _enough(counts: np.ndarray, classes: tuple[str, ...], data: str | os.PathLike[str], grouped: bool = False) -> None:
    """Refuse, naming the class, a site with fewer than ``MIN_IMAGES_FOR_THRESHOLD`` images of one."""
    if counts.min() >= MIN_IMAGES_FOR_THRESHOLD:
        return
    name = classes[int(counts.argmin())]
    what = (f"{counts.min()} independent images of {name} (the files of one patient or copies of one image count "
            "once)" if grouped else f"{counts.min()} images of {name}")
    raise ValueError(f"{data}: {what}; calibrating at a site needs at least {MIN_IMAGES_FOR_THRESHOLD} labelled "
                     "images of each class")


Scaling = tuple[float, np.ndarray]  # a temperature and a bias per class
Fit = Callable[[np.ndarray, np.ndarray], Scaling | None]


def _fitted(labels: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...], target_sensitivity: float | None,
            fit: Fit = fit_bias_corrected) -> tuple[Scaling | None, Decision | None]:
    """The temperature and bias for these images, then — for a binary model — the threshold on the
    probabilities they give, as training fits it."""
    scaling = fit(labels, probabilities)
    if scaling is not None:
        probabilities = scaled(probabilities, *scaling)
    binary = len(classes) == 2
    return scaling, choose_threshold(labels, probabilities, classes, target_sensitivity) if binary else None


def _temperature_only(labels: np.ndarray, probabilities: np.ndarray) -> Scaling | None:
    """:func:`fit_bias_corrected`'s answer with the bias held at 0."""
    temperature = fit_temperature(labels, probabilities)
    return None if temperature is None else (temperature, np.zeros(probabilities.shape[1]))


def _split_half(labels: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...], groups: np.ndarray | None,
                target_sensitivity: float | None, fit: Fit = fit_bias_corrected, shares: np.ndarray | None = None
                ) -> tuple[dict | None, np.ndarray | None]:
    """Mean and spread of the metrics of a scaling and threshold fitted on one half and scored on the other,
    with the calibration error and log loss of the model as it stands on those same halves (the error measured
    on fewer images reads higher, so only the same images compare); and every image's probabilities under the
    scaling fitted on the other half of the first halving. (None, None) when a half would hold too few
    independent images of a class to fit on. Scored at the stated prevalence ``shares``, if any."""
    groups = np.arange(len(labels)) if groups is None else groups
    if _sources(labels, groups, len(classes)).min() < 2 * MIN_IMAGES_FOR_THRESHOLD:
        return None, None
    scores, cross_fitted = [], probabilities.astype(np.float64)
    for seed in range(HALVES):
        halves = StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=seed).split(labels, labels, groups)
        for half, score in halves:
            scaling, decision = _fitted(labels[half], probabilities[half], classes, target_sensitivity, fit)
            scored = probabilities[score] if scaling is None else scaled(probabilities[score], *scaling)
            before = _site_summary(labels[score], probabilities[score], classes, shares=shares)
            scores.append(_site_summary(labels[score], scored, classes, decision, shares)
                          | {f"{key}_before": before[key] for key in ("expected_calibration_error", "log_loss")})
            if seed == 0:  # each image once, scored by the half it is not in
                cross_fitted[score] = scored
    estimate = {key: {"mean": float(np.mean([s[key] for s in scores])), "std": float(np.std([s[key] for s in scores]))}
                for key in scores[0] if key != "threshold"} | {"splits": len(scores)}
    return estimate, cross_fitted


def _site_summary(labels: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...],
                  decision: Decision | None = None, shares: np.ndarray | None = None) -> dict:
    """What a site reads: accuracy, calibration error and log loss; sensitivity, specificity and threshold if
    binary. At a stated prevalence (``shares``) the first three weigh each image by its class's stated share
    over its share here (sensitivity and specificity, counted within a class, do not move)."""
    metrics = classification_metrics(labels, probabilities, classes, decision)
    if shares is not None:
        weighted = at_prevalence(labels, probabilities, classes, shares, decision)
        metrics |= {key: weighted[key] for key in ("accuracy", "expected_calibration_error", "log_loss")}
    return {key: metrics[key] for key in (*SUMMARY, "threshold") if key in metrics}


def refuse_the_original(model_path: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """ValueError where ``out`` is the model itself: the original keeps the training site's calibration."""
    if Path(out).resolve() == Path(model_path).resolve():
        raise ValueError(f"{out}: the calibrated model must be a new file; the original keeps its calibration")


def write_calibrated(model_path: str | os.PathLike[str], out: str | os.PathLike[str], site: SiteCalibration,
                     record: dict) -> None:
    """A copy of the ONNX file that answers with the ``site``'s scaling and threshold (and unfamiliarity, if the
    site took its images as the reference), its card carrying the site's record (``metrics.site``); written
    atomically, never over the original (which keeps the training site's calibration)."""
    refuse_the_original(model_path, out)
    proto = onnx.load(str(model_path))
    metadata = {prop.key: prop.value for prop in proto.metadata_props}  # other keys than the card's stay
    card = ModelCard.from_metadata(metadata, str(model_path))
    set_here = site.familiarity is not None and site.familiarity.weights is not None
    if (set_at := record["data"] if set_here else familiarity_site(card)) is not None:  # a copy of a copy keeps it
        record = record | {"familiarity_set_at": set_at}
    card = replace(card, decision=site.decision or card.decision, metrics=card.metrics | {"site": record})
    if site.temperature is not None:
        proto = with_scaling(proto, site.temperature, np.array(list(site.bias.values())))
    if set_here:
        proto = with_depth_weights(proto, site.familiarity.weights, SITE_PREFIX)
        card = replace(card, outputs=card.outputs | {FAMILIARITY_NAME: site_description(record["data"])})
    onnx.helper.set_model_props(proto, metadata | card.to_metadata())
    with atomic_write(out, "wb") as handle:
        handle.write(proto.SerializeToString())


def is_calibrated_copy(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a copy an earlier calibration wrote (its card names a site): the files beside it with
    its stem are then that calibration's too, and a picture this one does not redraw may go."""
    return calibrated_site(path) is not None


def calibrated_site(path: str | os.PathLike[str]) -> dict | None:
    """The site record of the calibrated copy at ``path`` (``metrics.site``), or None where there is none."""
    card = card_of_file(path)
    return card.metrics.get("site") if card is not None else None


def calibration_file(default: Path, data: Path) -> Path:
    """``default``, or where it holds another site's calibrated copy (siteB calibrated after siteA: both took
    ``model.site.onnx``), the first of ``model.site-2.onnx``, ``-3``... that is free or holds this site's. A copy
    whose card names no site folder (written before they did) counts as another site's."""
    here = str(data.resolve())
    for candidate in numbered(default):
        site = calibrated_site(candidate)
        if not candidate.exists() or site is None or site.get("data_path") == here:  # none: an older copy's
            return candidate
    return default


def with_scaling(model: onnx.ModelProto, temperature: float, bias: np.ndarray) -> onnx.ModelProto:
    """A copy of ``model`` whose ``probabilities`` are its own rescaled: softmax(log p / temperature + bias), what
    dividing its logits by the temperature and adding the bias would give, appended after the output so it
    works on a file of any precision (and on one calibrated before: the names are new each time). A ``cam``
    output (per-location logits) is scaled so too: its spatial mean stays the logits the call is made from, and
    a binary heatmap's margin is measured against the site's threshold on the site's scale."""
    prefix = f"medclf_site{len(model.graph.node)}_"
    unscaled, unscaled_cam = prefix + "unscaled_probabilities", prefix + "unscaled_cam"
    renamed = {OUTPUT_NAME: unscaled, CAM_NAME: unscaled_cam}
    rescaled = onnx.ModelProto()
    rescaled.CopyFrom(model)
    for node in rescaled.graph.node:
        node.output[:] = [renamed.get(name, name) for name in node.output]
        node.input[:] = [renamed.get(name, name) for name in node.input]
    make = onnx.helper.make_node
    rescaled.graph.node.extend([
        make("Clip", [unscaled, prefix + "tiny"], [prefix + "clipped"]),  # log(0) would be -inf
        make("Log", [prefix + "clipped"], [prefix + "log"]),
        make("Mul", [prefix + "log", prefix + "inverse_temperature"], [prefix + "scaled"]),
        make("Add", [prefix + "scaled", prefix + "bias"], [prefix + "biased"]),
        make("Softmax", [prefix + "biased"], [OUTPUT_NAME], axis=-1),
    ])
    if any(output.name == CAM_NAME for output in rescaled.graph.output):
        rescaled.graph.node.extend([
            make("Mul", [unscaled_cam, prefix + "inverse_temperature"], [prefix + "scaled_cam"]),
            make("Add", [prefix + "scaled_cam", prefix + "bias"], [CAM_NAME]),  # the class axis is last
        ])
    rescaled.graph.initializer.extend([
        onnx.numpy_helper.from_array(np.array(1e-12, np.float32), prefix + "tiny"),
        onnx.numpy_helper.from_array(np.array(1 / temperature, np.float32), prefix + "inverse_temperature"),
        onnx.numpy_helper.from_array(np.asarray(bias, np.float32), prefix + "bias")])
    onnx.checker.check_model(rescaled)
    return rescaled
