"""The numbers clinicians read: accuracy, ROC AUC, per-class precision/recall/F1, sensitivity, specificity.

All computed by scikit-learn from labels and predicted probabilities, so any backend's output (Keras, ONNX at
any precision) is scored by the same code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, roc_auc_score

NEGATIVE_NAMES = ("normal", "negative", "healthy", "benign", "no", "none", "control")


def positive_class(classes: Sequence[str]) -> int:
    """For a binary task, the class that counts as 'positive' (the finding): the one not named like 'normal'."""
    negatives = [i for i, name in enumerate(classes) if name.lower().strip() in NEGATIVE_NAMES]
    return 1 - negatives[0] if len(classes) == 2 and len(negatives) == 1 else 1


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> dict:
    """Metrics for one split, JSON-ready. Binary tasks add sensitivity/specificity for the positive class."""
    predicted = probabilities.argmax(axis=1)
    indices = list(range(len(classes)))
    report = classification_report(labels, predicted, labels=indices, target_names=list(classes),
                                   output_dict=True, zero_division=0)
    metrics: dict = {
        "images": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "roc_auc_macro": _roc_auc(labels, probabilities),
        "per_class": {name: {key: float(report[name][key]) for key in ("precision", "recall", "f1-score", "support")}
                      for name in classes},
        "confusion_matrix": confusion_matrix(labels, predicted, labels=indices).tolist(),
    }
    if len(classes) == 2:
        positive = positive_class(classes)
        is_positive, said_positive = labels == positive, predicted == positive
        metrics["positive_class"] = classes[positive]
        metrics["sensitivity"] = _ratio(np.sum(is_positive & said_positive), np.sum(is_positive))
        metrics["specificity"] = _ratio(np.sum(~is_positive & ~said_positive), np.sum(~is_positive))
    return metrics


def _roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Macro one-vs-rest ROC AUC; None when a class is missing from ``labels`` (AUC is undefined then)."""
    if len(np.unique(labels)) != probabilities.shape[1]:
        return None
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(labels, probabilities[:, 1]))
    return float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"))


def _ratio(numerator: int, denominator: int) -> float | None:
    return float(numerator / denominator) if denominator else None
