"""The numbers clinicians read: accuracy, ROC AUC, per-class precision/recall/F1, sensitivity, specificity,
calibration — and the binary operating threshold, chosen on validation data only.

All computed by scikit-learn from labels and predicted probabilities, so any backend's output (Keras, ONNX at
any precision) is scored by the same code; the call itself is ``medclf.runtime.decision``, as in serving.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import (accuracy_score, classification_report, confusion_matrix, log_loss, precision_score,
                             roc_auc_score, roc_curve)

from medclf.runtime.decision import Decision, decide

# Youden's threshold from fewer validation images of a class than this is noise: on the 59 cataract photos
# (about 10 validation images per fold) it cost 5 points of 5-fold accuracy against the model's own 0.5.
MIN_IMAGES_FOR_THRESHOLD = 30

# Words that name the class without the finding, as public datasets spell their folders: NORMAL, 0_normal,
# Uninfected (malaria smears), No Finding (NIH chest X-rays), healthy, benign, negative, control.
NEGATIVE_NAMES = ("normal", "negative", "healthy", "benign", "no", "none", "control", "uninfected", "clear",
                  "nofinding", "notumor", "absent")
NEGATIONS = ("non", "no", "not", "un")  # non-covid beside covid, no_tumor beside tumor
REPORTED = ("precision", "recall", "f1-score", "support")  # per class, from scikit-learn's classification report


def positive_class(classes: Sequence[str]) -> int:
    """For a binary task, the class that counts as 'positive' (the finding): the one not named like 'normal' or
    as the negation of the other (``non-covid`` / ``covid``); class 1 when the names do not say (``0`` / ``1``)."""
    if len(classes) != 2:
        return 1
    words = [re.findall(r"[a-z]+", name.lower()) for name in classes]
    joined = ["".join(w) for w in words]
    negatives = [i for i in (0, 1) if set(words[i]) & set(NEGATIVE_NAMES) or joined[i] in NEGATIVE_NAMES
                 or any(joined[i] == prefix + joined[1 - i] for prefix in NEGATIONS)]
    return 1 - negatives[0] if len(negatives) == 1 else 1


def target_sensitivity_of(decision: Decision | None) -> float | None:
    """The sensitivity a model's threshold was chosen for (its rule: ``sensitivity>=0.95``, as
    :func:`choose_threshold` writes it), or None (Youden's J, argmax)."""
    found = re.match(r"sensitivity>=([0-9.e+-]+)", decision.rule) if decision is not None else None
    return float(found.group(1)) if found else None


def choose_threshold(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str],
                     target_sensitivity: float | None = None) -> Decision:
    """The operating point of a binary model, from validation labels and probabilities.

    Without a target: a threshold maximising Youden's J (sensitivity + specificity - 1). With one: the highest
    threshold that still reaches the target sensitivity (so specificity is as high as that allows). Each
    choice is really an interval of thresholds that call every validation image the same way; 0.5 (the
    model's own call) is kept when it lies in the interval, else its midpoint is used. Youden's rule also
    keeps 0.5 when validation has fewer than ``MIN_IMAGES_FOR_THRESHOLD`` images of a class; an asked-for
    sensitivity is always honoured.
    """
    if len(classes) != 2:
        raise ValueError(f"an operating threshold needs a binary task, not {len(classes)} classes")
    positive = positive_class(classes)
    is_positive = labels == positive
    smallest = min(int(is_positive.sum()), int((~is_positive).sum()))
    if smallest == 0 and target_sensitivity is not None:
        raise ValueError("choosing a threshold for a sensitivity needs validation images of both classes")
    if target_sensitivity is None and smallest < MIN_IMAGES_FOR_THRESHOLD:
        return Decision(positive_class=classes[positive], threshold=0.5,
                        rule=f"argmax (validation has only {smallest} images of a class)")
    fpr, tpr, thresholds = roc_curve(is_positive, probabilities[:, positive], drop_intermediate=False)
    if target_sensitivity is None:
        best, rule = np.flatnonzero(np.isclose(tpr - fpr, np.max(tpr - fpr))), "youden"
    else:
        best, rule = [int(np.argmax(tpr >= target_sensitivity))], f"sensitivity>={target_sensitivity:g}"
    # Thresholds in (thresholds[i + 1], thresholds[i]] all give roc point i; roc_curve's first one is +inf.
    intervals = [(float(thresholds[i + 1]) if i + 1 < len(thresholds) else 0.0, min(float(thresholds[i]), 1.0))
                 for i in best]
    if any(lower < 0.5 <= upper for lower, upper in intervals):
        return Decision(positive_class=classes[positive], threshold=0.5, rule=rule)
    lower, upper = intervals[0]
    middle = (lower + upper) / 2
    short = float(f"{middle:.6g}")  # six significant digits, not decimals: 1.5e-7 stays inside (lower, upper]
    return Decision(positive_class=classes[positive], threshold=short if lower < short <= upper else middle,
                    rule=rule)


def _per_class(scores: dict, called: int) -> dict:
    """scikit-learn's precision, recall, F1 and support for one class, None where undefined: recall for a class
    the images hold none of, precision for one never called (its 0.000 read as "every one missed")."""
    undefined = {"recall": scores["support"] == 0, "precision": called == 0}
    undefined["f1-score"] = any(undefined.values())
    return {key: None if undefined.get(key) else float(scores[key]) for key in REPORTED}


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str],
                           decision: Decision | None = None) -> dict:
    """Metrics for one split, JSON-ready. Binary tasks add sensitivity/specificity for the positive class, at
    ``decision``'s threshold when given (else at the most probable class)."""
    predicted = decide(probabilities, classes, decision)
    indices = list(range(len(classes)))
    report = classification_report(labels, predicted, labels=indices, target_names=list(classes),
                                   output_dict=True, zero_division=0)
    matrix = confusion_matrix(labels, predicted, labels=indices)
    metrics: dict = {
        "images": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "roc_auc_macro": macro_roc_auc(labels, probabilities),
        "per_class": {name: {**_per_class(report[name], int(matrix[:, k].sum())),
                             **one_vs_rest(matrix, labels, probabilities, k)} for k, name in enumerate(classes)},
        "confusion_matrix": matrix.tolist(),
        "expected_calibration_error": expected_calibration_error(labels, probabilities),
        # a proper scoring rule: unlike binned ECE it does not read higher on fewer images, so runs compare
        "log_loss": float(log_loss(labels, np.clip(probabilities, 1e-15, 1.0), labels=indices)),
    }
    if len(classes) == 2:
        positive = positive_class(classes)
        is_positive, said_positive = labels == positive, predicted == positive
        metrics["positive_class"] = classes[positive]
        metrics["threshold"] = decision.threshold if decision is not None else None
        metrics["threshold_rule"] = decision.rule if decision is not None else None
        metrics["sensitivity"] = _ratio(np.sum(is_positive & said_positive), np.sum(is_positive))
        metrics["specificity"] = _ratio(np.sum(~is_positive & ~said_positive), np.sum(~is_positive))
        # The model's own call (p >= 0.5), beside the threshold's: what argmax-reporting baselines publish.
        metrics["accuracy_at_argmax"] = float(accuracy_score(labels, probabilities.argmax(axis=1)))
    return metrics


def one_vs_rest(matrix: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, k: int) -> dict:
    """Class ``k`` against all others, as a clinician reads a multi-class result: its specificity (of the images
    not of class ``k``, the share not called ``k``; its sensitivity is the report's recall) and its ROC AUC
    (None where ``labels`` lack either side)."""
    others = matrix.sum() - matrix[k].sum()
    is_k = labels == k
    auc = float(roc_auc_score(is_k, probabilities[:, k])) if 0 < is_k.sum() < len(labels) else None
    return {"specificity": _ratio(others - (matrix[:, k].sum() - matrix[k, k]), others), "roc_auc": auc}


def per_source_metrics(labels: np.ndarray, probabilities: np.ndarray, groups: np.ndarray, classes: Sequence[str],
                       decision: Decision | None = None) -> dict:
    """Accuracy counted once per source (a cell, a patient) instead of once per image: each group's call is made
    from its images' mean probabilities. For datasets shipped as augmented copies of few sources, this is the
    number of *different* things the model got right — blood-cells TEST is ~100 cells in 2,487 images. A group
    with files of two classes (one patient's normal and abnormal films) is a source of each. With its 95%
    Wilson interval, the sources being independent trials."""
    group_index = np.unique(groups, return_inverse=True)[1].reshape(-1)
    ids, index = np.unique(group_index * probabilities.shape[1] + labels, return_inverse=True)  # (group, class)
    index = index.reshape(-1)
    mean = np.zeros((len(ids), probabilities.shape[1]))
    np.add.at(mean, index, probabilities)
    mean /= np.bincount(index)[:, None]
    truth = np.zeros(len(ids), dtype=np.int64)
    truth[index] = labels
    called = decide(mean, classes, decision)
    per_class = {name: {"sources": int(np.sum(truth == k)), "right": int(np.sum((truth == k) & (called == k)))}
                 for k, name in enumerate(classes)}
    right = int(np.sum(called == truth))
    interval = binomtest(right, len(ids)).proportion_ci(0.95, method="wilson")  # each source one trial
    return {"sources": len(ids), "accuracy": right / len(ids), "accuracy_interval": [interval.low, interval.high],
            "per_class": per_class}


def stated_shares(prevalence: dict[str, float], classes: Sequence[str], counts: np.ndarray) -> np.ndarray:
    """Every class's share of the cases at a site, from the ``prevalence`` stated for some of them
    (``{"PNEUMONIA": 0.1}``): what the stated ones leave is split among the others in the proportions of their
    image ``counts``."""
    unknown = sorted(set(prevalence) - set(classes))
    if unknown:
        raise ValueError(f"prevalence of {', '.join(unknown)}: not a class of this model ({', '.join(classes)})")
    if not all(0.0 < share < 1.0 for share in prevalence.values()):
        raise ValueError(f"a class's prevalence is a share between 0 and 1 (exclusive), not {prevalence}")
    if missing := [name for name, count in zip(classes, counts) if count == 0]:  # nothing to weigh up to a share
        raise ValueError(f"the images hold no {', '.join(missing)}: they cannot be weighted to a prevalence")
    stated = np.array([name in prevalence for name in classes])
    shares = np.array([prevalence.get(name, 0.0) for name in classes])
    left = 1.0 - shares.sum()
    if stated.all() and abs(left) > 1e-3 or not stated.all() and left <= 0:
        raise ValueError(f"the stated prevalences add up to {shares.sum():g}: every class's share together is 1")
    if stated.all():
        return shares / shares.sum()
    return np.where(stated, shares, left * counts / counts[~stated].sum())


def prevalence_ratios(labels: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Per class, its share at the site over its share of ``labels``: how much likelier the site makes it."""
    return shares / (np.bincount(labels, minlength=len(shares)) / len(labels))


def prevalence_weights(labels: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Each image's weight at a stated prevalence (its class's :func:`prevalence_ratios`), so a collection of so
    many of each class counts as the site's cases would."""
    return prevalence_ratios(labels, shares)[labels]


def at_prevalence(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], shares: np.ndarray,
                  decision: Decision | None = None) -> dict:
    """What the calls are worth where the classes come in ``shares``: accuracy, calibration error, log loss and
    each class's precision (how often a call of it is right; for a binary model the positive and negative
    predictive values, which unlike sensitivity and specificity depend on prevalence), every image weighed by
    :func:`prevalence_weights`."""
    weights = prevalence_weights(labels, shares)
    called = decide(probabilities, classes, decision)
    indices = list(range(len(classes)))
    precision = precision_score(labels, called, labels=indices, average=None, sample_weight=weights, zero_division=0)
    return {"shares": dict(zip(classes, map(float, shares))),
            "accuracy": float(accuracy_score(labels, called, sample_weight=weights)),
            "expected_calibration_error": expected_calibration_error(labels, probabilities, weights=weights),
            "log_loss": float(log_loss(labels, np.clip(probabilities, 1e-15, 1.0), labels=indices,
                                       sample_weight=weights)),
            "precision": dict(zip(classes, map(float, precision)))}


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = 15,
                               weights: np.ndarray | None = None) -> float:
    """How far the top-1 probability is from the accuracy it promises: the mean |accuracy - confidence| over
    equal-width confidence bins, weighted by their share of images (Guo et al. 2017). 0 is perfectly calibrated.
    ``weights`` count some images more than others (a site's stated prevalence); by default each counts once."""
    weights = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gaps = [abs(np.average(correct[which == b], weights=weights[which == b])
                - np.average(confidence[which == b], weights=weights[which == b])) * weights[which == b].sum()
            for b in range(bins) if np.any(which == b)]
    return float(np.sum(gaps) / weights.sum())


def macro_roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Macro one-vs-rest ROC AUC; None when a class is missing from ``labels`` (AUC is undefined then)."""
    if len(np.unique(labels)) != probabilities.shape[1]:
        return None
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(labels, probabilities[:, 1]))
    return float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"))


def _ratio(numerator: int, denominator: int) -> float | None:
    return float(numerator / denominator) if denominator else None
