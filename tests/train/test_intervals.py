"""95% confidence intervals: as wide as the test set's independent sources allow, never as narrow as its files."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from medclf.runtime.decision import Decision
from medclf.train.evaluate import classification_metrics, macro_roc_auc
from medclf.train.intervals import bootstrap_intervals, one_vs_rest_auc

CLASSES = ("NORMAL", "PNEUMONIA")


def scored(n: int, accuracy: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images, half of each class, called right at ``accuracy`` (probability 0.8 for the called class)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    right = rng.permutation(n) < round(accuracy * n)
    called = np.where(right, labels, 1 - labels)
    p = np.where(called == 1, 0.8, 0.2) + rng.uniform(-0.1, 0.1, n)
    return labels, np.stack([1 - p, p], axis=1)


def test_for_independent_images_the_interval_is_wilsons():
    labels, probabilities = scored(400, 0.85)
    low, high = bootstrap_intervals(labels, probabilities, CLASSES)["accuracy"]
    wilson = binomtest(340, 400).proportion_ci(0.95, method="wilson")
    assert low < 0.85 < high
    assert low == pytest.approx(wilson.low, abs=0.01) and high == pytest.approx(wilson.high, abs=0.01)


def test_copies_of_few_sources_give_the_interval_of_the_sources_not_of_the_files():
    """Blood-cells TEST is 100 cells in 2,487 images: 25 copies of each of 40 sources here measure no more than
    the 40 sources would, and an interval over files would read five times narrower."""
    labels, probabilities = scored(40, 0.8)
    copies = 25
    labels_c, probabilities_c = np.repeat(labels, copies), np.repeat(probabilities, copies, axis=0)
    groups = np.repeat([f"cell{i}" for i in range(40)], copies)
    by_source = bootstrap_intervals(labels_c, probabilities_c, CLASSES, groups=groups)
    by_file = bootstrap_intervals(labels_c, probabilities_c, CLASSES)
    alone = bootstrap_intervals(labels, probabilities, CLASSES)
    assert by_source["resampled"] == "sources" and by_source["sources"] == 40
    assert by_source["accuracy"] == pytest.approx(alone["accuracy"], abs=0.03)
    width = {name: r["accuracy"][1] - r["accuracy"][0] for name, r in (("source", by_source), ("file", by_file))}
    assert width["source"] > 4 * width["file"]


def test_sensitivity_and_specificity_are_of_the_calls_at_the_models_threshold():
    labels, probabilities = scored(300, 0.9, seed=1)
    at_half = bootstrap_intervals(labels, probabilities, CLASSES)
    eager = bootstrap_intervals(labels, probabilities, CLASSES, Decision(positive_class="PNEUMONIA", threshold=0.05))
    assert eager["sensitivity"] == [1.0, 1.0] and eager["specificity"][1] < 0.1  # everything called pneumonia
    measured = classification_metrics(labels, probabilities, CLASSES)
    for name in ("sensitivity", "specificity", "accuracy", "roc_auc_macro"):
        assert at_half[name][0] < measured[name] < at_half[name][1], name


def test_every_resample_holds_every_class_so_a_rare_one_keeps_its_roc_auc():
    """Four monocytes among 100 cells: resampled freely, one resample in 60 would hold none and have no AUC."""
    rng = np.random.default_rng(2)
    labels = np.array([0] * 96 + [1] * 4)
    probabilities = rng.dirichlet([1, 1], 100)
    result = bootstrap_intervals(labels, probabilities, CLASSES, resamples=200)
    assert result["roc_auc_macro"] is not None and result["sensitivity"] is not None


def test_a_class_present_only_beside_another_in_mixed_sources_is_in_every_resample():
    """Patient p0: mostly films of a, one of c; stratified by each source's main class, c went missing from
    3 resamples in 10 and its AUC and sensitivity came from the rest (while "resamples" said all)."""
    from medclf.train.intervals import _class_sets, _sources, _strata

    labels = np.array([0, 0, 0, 2] + [0] * 10 + [1] * 10)
    groups = np.array(["p0"] * 4 + [f"q{i}" for i in range(20)])
    order, _, sizes = _sources(labels, groups)
    strata = _strata(_class_sets(labels, order, sizes, 3))
    owner = np.unique(groups, return_inverse=True)[1]
    holds = [{int(k) for k in labels[owner == source]} for source in range(len(sizes))]
    for k in range(3):  # some stratum each of whose sources holds k: every resample draws one of them
        assert any(all(k in holds[source] for source in stratum) for stratum in strata)


@pytest.mark.parametrize("classes", [2, 4])
def test_roc_auc_from_ranks_is_scikit_learns(classes):
    rng = np.random.default_rng(classes)
    labels = rng.integers(0, classes, 500)
    probabilities = rng.dirichlet(np.ones(classes), 500)
    probabilities[:, 0] = np.round(probabilities[:, 0], 2)  # ties, which count half in both
    probabilities[:, 1:] *= ((1 - probabilities[:, 0]) / probabilities[:, 1:].sum(axis=1))[:, None]
    assert one_vs_rest_auc(labels, probabilities) == pytest.approx(macro_roc_auc(labels, probabilities), abs=1e-12)


def test_large_test_sets_take_fewer_resamples_to_stay_within_seconds():
    labels, probabilities = scored(40_000, 0.9)
    assert bootstrap_intervals(labels, probabilities, CLASSES)["resamples"] == 250
    assert bootstrap_intervals(*scored(400, 0.9), CLASSES)["resamples"] == 1000


def test_with_more_classes_each_gets_its_sensitivity_and_specificity_interval():
    """Four monocyte cells in blood TEST: their sensitivity's interval spans most of 0-1, a clinician should see."""
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1, 2], [200, 200, 8])
    probabilities = rng.dirichlet([1, 1, 1], len(labels))
    probabilities[np.arange(len(labels)), labels] += 0.6  # mostly right
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    result = bootstrap_intervals(labels, probabilities, ("a", "b", "rare"))
    measured = classification_metrics(labels, probabilities, ("a", "b", "rare"))["per_class"]
    assert set(result["per_class"]) == {"a", "b", "rare"} and "sensitivity" not in result
    for name, bounds in result["per_class"].items():
        assert bounds["sensitivity"][0] <= measured[name]["recall"] <= bounds["sensitivity"][1]
        assert bounds["specificity"][0] <= measured[name]["specificity"] <= bounds["specificity"][1]
    width = {name: bounds["sensitivity"][1] - bounds["sensitivity"][0] for name, bounds in result["per_class"].items()}
    assert width["rare"] > 3 * width["a"]


def test_no_images_have_no_interval():
    assert bootstrap_intervals(np.zeros(0, dtype=int), np.zeros((0, 2)), CLASSES) is None
