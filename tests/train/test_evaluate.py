"""Metrics clinicians read, checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from medclf.train.evaluate import classification_metrics, positive_class


@pytest.mark.parametrize("classes, positive", [(("NORMAL", "PNEUMONIA"), 1), (("cataract", "normal"), 0),
                                               (("benign", "malignant"), 1), (("cat", "dog"), 1)])
def test_the_positive_class_is_the_finding(classes, positive):
    assert positive_class(classes) == positive


def test_binary_metrics_report_sensitivity_and_specificity_for_the_finding():
    classes = ("cataract", "normal")  # the finding is class 0 here
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p_cataract = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.1, 0.3, 0.6, 0.2, 0.1])
    metrics = classification_metrics(labels, np.stack([p_cataract, 1 - p_cataract], axis=1), classes)
    assert metrics["positive_class"] == "cataract"
    assert metrics["sensitivity"] == pytest.approx(3 / 4)
    assert metrics["specificity"] == pytest.approx(5 / 6)
    assert metrics["accuracy"] == pytest.approx(8 / 10)
    assert metrics["confusion_matrix"] == [[3, 1], [1, 5]]
    assert metrics["roc_auc_macro"] == pytest.approx(21.5 / 24)  # 24 pairs: 21 won, 1 tied


def test_multiclass_metrics_have_per_class_scores_and_macro_auc():
    labels = np.array([0, 1, 2, 2])
    probabilities = np.eye(3)[[0, 1, 2, 1]] * 0.8 + 0.2 / 3
    metrics = classification_metrics(labels, probabilities, ("a", "b", "c"))
    assert metrics["per_class"]["c"]["recall"] == pytest.approx(0.5)
    assert metrics["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert "sensitivity" not in metrics and 0.5 < metrics["roc_auc_macro"] <= 1.0


def test_auc_is_none_when_a_class_is_absent():
    metrics = classification_metrics(np.array([0, 0]), np.array([[0.9, 0.1, 0.0], [0.6, 0.3, 0.1]]), "abc")
    assert metrics["roc_auc_macro"] is None
