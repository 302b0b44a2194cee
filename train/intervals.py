"""How sure a test set lets anyone be: 95% confidence intervals of accuracy, ROC AUC, sensitivity and specificity.

A test set is a sample, and a clinician reading "sensitivity 97.9%" needs to know of how many. The chest films'
624 test images pin accuracy down to about ±2.5 points. Blood-cells TEST is 2,487 images but only 100 cells,
four of them monocytes: one cell more or less right moves accuracy by up to six points, and an interval over
images (about ±1.3) would claim a precision the data does not have. So the bootstrap resamples whole *sources*
where files come in groups (a patient's films, one cell's augmented copies: the groups ``per_source`` counts)
and single images otherwise. Sources are resampled apart by the classes they hold (a cell's copies: one class;
a patient with films of two findings: that pair), so every resample holds each class as often as the data does
and ROC AUC is always defined (stratified by each source's main class alone, a class present only beside
another in mixed sources went missing from 3 resamples in 10).

Percentile intervals from :data:`RESAMPLES` resamples with a fixed seed, so a report can be reproduced. The
calls themselves are not redone: each image keeps the call made at the model's threshold, as in serving. ROC
AUC is computed as the Mann-Whitney statistic from ranks (:func:`one_vs_rest_auc`): scikit-learn's value to the
last digit, five times faster, which matters a thousand times over (4-class blood TEST: 1.3 vs 6.2 ms).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

from medclf.runtime.decision import Decision, decide

from .evaluate import positive_class

LEVEL = 0.95
RESAMPLES = 1000
# A resample costs ~0.6 ms per 1,000 images here: past 10,000 images fewer resamples (never under 200) keep the
# whole at ~6 s, where intervals are narrow anyway (TissueMNIST's 47,280 test images: 211 resamples)
RESAMPLED_IMAGES = 10_000_000
MIN_RESAMPLES = 200


def bootstrap_intervals(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str],
                        decision: Decision | None = None, groups: np.ndarray | None = None,
                        resamples: int | None = None, seed: int = 0) -> dict | None:
    """``{"level", "resampled", "sources", "resamples", "accuracy": [low, high], "roc_auc_macro": [...]}``, and
    ``"sensitivity"`` and ``"specificity"`` of a binary task's positive class or, for more classes, of each
    (``"per_class"``), for the calls made at ``decision``'s threshold; ``groups`` (one id per image) are
    resampled whole. ``resamples``: :data:`RESAMPLES`, fewer for test sets over 10,000 images."""
    return intervals_of_calls(labels, probabilities, decide(probabilities, classes, decision), classes, groups,
                              resamples, seed)


def intervals_of_calls(labels: np.ndarray, probabilities: np.ndarray, called: np.ndarray, classes: Sequence[str],
                       groups: np.ndarray | None = None, resamples: int | None = None,
                       seed: int = 0) -> dict | None:
    """:func:`bootstrap_intervals` of calls already made (cross-validation's, each by its fold's model and
    threshold); None for no images."""
    if len(labels) == 0:
        return None
    if resamples is None:
        resamples = max(MIN_RESAMPLES, min(RESAMPLES, RESAMPLED_IMAGES // max(len(labels), 1)))
    order, starts, sizes = _sources(labels, groups)
    strata = _strata(_class_sets(labels, order, sizes, len(classes)))
    rng = np.random.default_rng(seed)
    estimates: dict[str, list[float]] = {}
    for _ in range(resamples):
        picked = np.concatenate([rng.choice(stratum, len(stratum)) for stratum in strata])  # sources
        chosen = order[_ranges(starts[picked], sizes[picked])]  # their images
        for name, value in _scores(labels[chosen], called[chosen], probabilities[chosen]).items():
            estimates.setdefault(name, []).append(value)
    tails = 100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2
    bounds = {name: [float(x) for x in np.percentile(values, tails)] for name, values in estimates.items()}
    result = {"level": LEVEL, "resampled": "images" if groups is None else "sources", "sources": len(sizes),
              "resamples": resamples, "accuracy": bounds["accuracy"], "roc_auc_macro": bounds.get("roc_auc_macro")}
    if len(classes) == 2:
        positive = positive_class(classes)
        return result | {"sensitivity": bounds.get(f"sensitivity {positive}"),
                         "specificity": bounds.get(f"specificity {positive}")}
    return result | {"per_class": {name: {"sensitivity": bounds.get(f"sensitivity {k}"),
                                          "specificity": bounds.get(f"specificity {k}")}
                                   for k, name in enumerate(classes)}}


def resampled(intervals: dict, per_source: dict | None = None) -> str:
    """What ``intervals`` resampled, for a reader: '427 patients' (as ``per_source`` names its groups), '100
    sources' or '624 images'."""
    return f"{intervals['sources']} {(per_source or {}).get('kind') or intervals['resampled']}"


def _scores(truth: np.ndarray, calls: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """One resample's accuracy, macro ROC AUC (where every class is in it) and each class's sensitivity and
    specificity (where it has images of the class and of others)."""
    scores = {"accuracy": float(np.mean(truth == calls))}
    if len(np.unique(truth)) == probabilities.shape[1]:  # else undefined (a class lost to a one-image group)
        scores["roc_auc_macro"] = one_vs_rest_auc(truth, probabilities)
    for k in range(probabilities.shape[1]):
        is_k = truth == k
        if is_k.any():
            scores[f"sensitivity {k}"] = float(np.mean(calls[is_k] == k))
        if (~is_k).any():
            scores[f"specificity {k}"] = float(np.mean(calls[~is_k] != k))
    return scores


def one_vs_rest_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC (the positive class's alone for two classes), each class's from the ranks of
    its probability: the chance that an image of the class is ranked above one that is not, ties counting half."""
    aucs = []
    for k in range(1, 2) if probabilities.shape[1] == 2 else range(probabilities.shape[1]):
        ranks, is_k = rankdata(probabilities[:, k]), labels == k
        n_k = int(is_k.sum())
        aucs.append((ranks[is_k].sum() - n_k * (n_k + 1) / 2) / (n_k * (len(labels) - n_k)))
    return float(np.mean(aucs))


def _sources(labels: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(order, starts, sizes)``: the images sorted by source, and where each source's run starts and how long
    it is; every image a source of its own without ``groups``."""
    if groups is None:
        return np.arange(len(labels)), np.arange(len(labels)), np.ones(len(labels), dtype=np.int64)
    owner = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    sizes = np.bincount(owner)
    return np.argsort(owner, kind="stable"), np.cumsum(sizes) - sizes, sizes


def _class_sets(labels: np.ndarray, order: np.ndarray, sizes: np.ndarray, num_classes: int) -> np.ndarray:
    """Each source's kind: which classes its files hold, numbered (sources holding the same classes alike)."""
    owner = np.repeat(np.arange(len(sizes)), sizes)
    held = np.zeros((len(sizes), num_classes), dtype=bool)
    held[owner, labels[order]] = True
    kinds, kind = np.unique(held, axis=0, return_inverse=True)
    rank = sorted(range(len(kinds)), key=lambda i: (int(kinds[i].argmax()), tuple(~kinds[i])))  # class order first
    return np.argsort(rank)[kind.reshape(-1)]


def _strata(class_sets: np.ndarray) -> list[np.ndarray]:
    """The sources holding each set of classes present, resampled apart."""
    return [np.flatnonzero(class_sets == kind) for kind in np.unique(class_sets)]


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``starts[0], starts[0] + 1, ... starts[0] + sizes[0] - 1, starts[1], ...`` without a Python loop."""
    offsets = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return np.repeat(starts, sizes) + offsets
