"""Metrics clinicians read, checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from medclf.runtime.decision import Decision
from medclf.train.evaluate import (
    MIN_IMAGES_FOR_THRESHOLD, at_prevalence, choose_threshold, classification_metrics, expected_calibration_error,
    positive_class, stated_shares)


@pytest.mark.parametrize("classes, positive", [
    (("NORMAL", "PNEUMONIA"), 1), (("cataract", "normal"), 0), (("benign", "malignant"), 1), (("cat", "dog"), 1),
    (("Parasitized", "Uninfected"), 0), (("covid", "non-covid"), 0), (("no_tumor", "tumor"), 1),
    (("notumor", "tumor"), 1), (("0_normal", "1_pneumonia"), 1), (("Effusion", "No Finding"), 0), (("0", "1"), 1),
    (("Healthy Controls", "Glaucoma"), 1), (("normal", "abnormal"), 1)])
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
    # each class against the others: b is called for one of the three images not b (a c)
    assert metrics["per_class"]["b"]["specificity"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["a"]["specificity"] == 1.0 and metrics["per_class"]["a"]["roc_auc"] == 1.0
    assert metrics["per_class"]["c"]["roc_auc"] == pytest.approx(0.75)  # c scores 0.87, 0.07 vs 0.07, 0.07


def test_auc_is_none_when_a_class_is_absent():
    metrics = classification_metrics(np.array([0, 0]), np.array([[0.9, 0.1, 0.0], [0.6, 0.3, 0.1]]), "abc")
    assert metrics["roc_auc_macro"] is None
    assert metrics["per_class"]["a"]["roc_auc"] is None and metrics["per_class"]["a"]["specificity"] is None
    assert metrics["per_class"]["b"]["roc_auc"] is None and metrics["per_class"]["b"]["specificity"] == 1.0


def test_a_score_with_nothing_to_count_is_none_not_zero():
    """A class the images hold none of printed sensitivity 0.000, and one never called precision 0.000: both read
    as "every one missed"."""
    metrics = classification_metrics(np.array([0, 0, 1]), np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1],
                                                                     [0.3, 0.6, 0.1]]), "abc")
    absent, a = metrics["per_class"]["c"], metrics["per_class"]["a"]
    assert (absent["recall"], absent["precision"], absent["f1-score"], absent["support"]) == (None, None, None, 0)
    assert a["recall"] == 0.5 and a["precision"] == 1.0 and a["f1-score"] == 2 / 3
    never_called = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.8, 0.2]]), "ab")
    assert never_called["per_class"]["b"]["precision"] is None and never_called["per_class"]["b"]["recall"] == 0.0


def _many(labels, p, times=MIN_IMAGES_FOR_THRESHOLD):
    """The same validation scores, repeated so Youden's rule has enough images per class to apply."""
    return np.tile(labels, times), np.tile(p, times)


def _binary(p_positive, positive=1):
    p = np.asarray(p_positive, dtype=np.float64)
    return np.stack([1 - p, p], axis=1) if positive == 1 else np.stack([p, 1 - p], axis=1)


def test_youden_threshold_separates_validation_scores_halfway():
    labels, p = _many([0, 0, 0, 0, 1, 1, 1, 1], [0.05, 0.1, 0.2, 0.3, 0.35, 0.6, 0.8, 0.9])  # split at 0.3-0.35
    decision = choose_threshold(labels, _binary(p), ("NORMAL", "PNEUMONIA"))
    assert decision.positive_class == "PNEUMONIA" and decision.rule == "youden"
    assert decision.threshold == pytest.approx(0.325)


def test_target_sensitivity_lowers_the_threshold_until_it_is_reached():
    labels, p = _many([0, 0, 0, 0, 1, 1, 1, 1], [0.05, 0.1, 0.4, 0.7, 0.3, 0.6, 0.8, 0.9])
    youden = choose_threshold(labels, _binary(p), ("NORMAL", "PNEUMONIA"))
    strict = choose_threshold(labels, _binary(p), ("NORMAL", "PNEUMONIA"), target_sensitivity=1.0)
    assert strict.threshold == pytest.approx((0.3 + 0.1) / 2) and strict.rule == "sensitivity>=1"
    metrics = classification_metrics(labels, _binary(p), ("NORMAL", "PNEUMONIA"), strict)
    assert metrics["sensitivity"] == 1.0 and metrics["threshold"] == strict.threshold
    assert strict.threshold < youden.threshold


def test_a_threshold_between_tiny_probabilities_stays_between_them_and_the_rule_is_recorded():
    """Rounded to six decimals, a midpoint of 1.5e-7 became 0.0: every image positive, specificity 0 instead of
    0.75 — what a fitted temperature's sharp probabilities give a sensitivity of 0.99."""
    labels, p = _many([0, 0, 0, 1, 1, 1], [4e-8, 5e-8, 0.2, 2.6e-7, 0.7, 0.9])
    decision = choose_threshold(labels, _binary(p), ("NORMAL", "PNEUMONIA"), target_sensitivity=0.99)
    assert 5e-8 < decision.threshold <= 2.6e-7
    metrics = classification_metrics(labels, _binary(p), ("NORMAL", "PNEUMONIA"), decision)
    assert metrics["sensitivity"] == 1.0 and metrics["specificity"] == pytest.approx(2 / 3)
    assert metrics["threshold_rule"] == "sensitivity>=0.99"


def test_binary_metrics_also_give_the_accuracy_of_the_models_own_call_as_argmax_baselines_count_it():
    labels, p = _many([0, 0, 0, 0, 1, 1, 1, 1], [0.05, 0.1, 0.2, 0.3, 0.35, 0.4, 0.8, 0.9])
    decision = choose_threshold(labels, _binary(p), ("NORMAL", "PNEUMONIA"))
    metrics = classification_metrics(labels, _binary(p), ("NORMAL", "PNEUMONIA"), decision)
    assert decision.threshold == pytest.approx((0.3 + 0.35) / 2)
    assert metrics["accuracy"] == 1.0 and metrics["accuracy_at_argmax"] == pytest.approx(6 / 8)


def test_threshold_works_when_the_finding_is_class_zero():
    classes = ("cataract", "normal")
    labels, p = _many([0, 0, 1, 1], [0.9, 0.4, 0.2, 0.1])
    probabilities = _binary(p, positive=0)
    decision = choose_threshold(labels, probabilities, classes)
    assert decision.positive_class == "cataract" and 0.2 < decision.threshold < 0.4
    assert classification_metrics(labels, probabilities, classes, decision)["accuracy"] == 1.0


def test_threshold_needs_a_binary_task_and_a_target_sensitivity_needs_both_classes():
    with pytest.raises(ValueError, match="binary"):
        choose_threshold(np.array([0, 1, 2]), np.eye(3), "abc")
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.array([1, 1]), _binary([0.6, 0.7]), ("NORMAL", "PNEUMONIA"), target_sensitivity=0.9)


def test_without_validation_images_of_a_class_the_model_keeps_its_own_call():
    decision = choose_threshold(np.array([1, 1]), _binary([0.6, 0.7]), ("NORMAL", "PNEUMONIA"))
    assert decision.threshold == 0.5 and decision.rule.startswith("argmax (validation has only 0 images")


def test_calibration_error_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    labels = np.array([0, 0, 0, 1])  # 75% correct at 0.75 confidence
    calibrated = np.array([[0.75, 0.25]] * 4)
    overconfident = np.array([[0.99, 0.01]] * 4)
    assert expected_calibration_error(labels, calibrated) == pytest.approx(0.0)
    assert expected_calibration_error(labels, overconfident) == pytest.approx(0.24)
    # the log loss punishes the confident wrong answer: -(3 log 0.99 + log 0.01) / 4 vs -(3 log 0.75 + log 0.25) / 4
    assert classification_metrics(labels, calibrated, ("a", "b"))["log_loss"] == pytest.approx(0.5623, abs=1e-4)
    assert classification_metrics(labels, overconfident, ("a", "b"))["log_loss"] == pytest.approx(1.1588, abs=1e-4)


def test_an_image_weighing_twice_counts_in_the_calibration_error_as_two_copies_of_it():
    rng = np.random.default_rng(0)
    labels, p = rng.integers(0, 2, 200), rng.uniform(0, 1, 200)
    probabilities = np.stack([1 - p, p], axis=1)
    weights = rng.integers(1, 4, 200)
    copies = np.repeat(np.arange(200), weights)
    assert expected_calibration_error(labels, probabilities, weights=weights) == pytest.approx(
        expected_calibration_error(labels[copies], probabilities[copies]))


def test_the_models_own_half_way_call_is_kept_when_it_is_among_the_best_thresholds():
    labels, p = _many([0, 0, 0, 1, 1, 1], [0.02, 0.1, 0.3, 0.7, 0.95, 0.99])  # any threshold in (0.3, 0.7]
    assert choose_threshold(labels, _binary(p), ("NORMAL", "PNEUMONIA")).threshold == 0.5


def test_a_validation_set_too_small_to_trust_keeps_the_models_own_call_unless_a_sensitivity_is_asked():
    labels, p = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])
    decision = choose_threshold(labels, _binary(p), ("NORMAL", "PNEUMONIA"))
    assert decision.threshold == 0.5 and "only 2 images" in decision.rule
    assert choose_threshold(labels, _binary(p), ("NORMAL", "PNEUMONIA"), target_sensitivity=1.0).threshold < 0.3


def test_per_source_accuracy_gives_each_source_one_vote_from_its_mean_probability():
    from medclf.train.evaluate import per_source_metrics

    # source 0 (class a): three copies, two called right → mean says a; source 1 (class b): one copy, wrong;
    # source 2 (class b): two copies, right
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8], [0.3, 0.7]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    groups = np.array([5, 5, 5, 9, 7, 7])
    result = per_source_metrics(labels, probabilities, groups, ("a", "b"))
    assert result["sources"] == 3 and result["accuracy"] == pytest.approx(2 / 3)
    assert result["accuracy_interval"] == pytest.approx([0.2077, 0.9385], abs=1e-4)  # Wilson's, by hand: 3 trials
    assert result["per_class"] == {"a": {"sources": 1, "right": 1}, "b": {"sources": 2, "right": 1}}


def test_a_patient_with_films_of_both_classes_is_a_source_of_each():
    from medclf.train.evaluate import per_source_metrics

    probabilities = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8]])
    labels = np.array([0, 1, 1])  # patient 4: a normal film and an abnormal one; patient 6: abnormal
    result = per_source_metrics(labels, probabilities, np.array(["p4", "p4", "p6"]), ("NORMAL", "PNEUMONIA"))
    assert result["sources"] == 3 and result["accuracy"] == 1.0
    assert result["per_class"] == {"NORMAL": {"sources": 1, "right": 1}, "PNEUMONIA": {"sources": 2, "right": 2}}


def test_classes_whose_prevalence_is_not_stated_share_what_is_left_as_the_site_images_hold_them():
    classes, counts = ("E", "L", "M", "N"), np.array([10, 30, 10, 50])
    np.testing.assert_allclose(stated_shares({"N": 0.6}, classes, counts), [0.08, 0.24, 0.08, 0.6])
    np.testing.assert_allclose(stated_shares({"E": 0.1, "L": 0.2, "M": 0.1, "N": 0.6}, classes, counts),
                               [0.1, 0.2, 0.1, 0.6])
    for stated, reason in (({"X": 0.5}, "prevalence of X: not a class of this model"),
                           ({"N": 1.2}, "share between 0 and 1"), ({"N": 0.7, "L": 0.4}, "add up to 1.1"),
                           ({"E": 0.1, "L": 0.2, "M": 0.1, "N": 0.5}, "add up to 0.9")):
        with pytest.raises(ValueError, match=reason):
            stated_shares(stated, classes, counts)
    for stated in ({"N": 0.6}, {"E": 0.1, "L": 0.2, "M": 0.1, "N": 0.6}):  # NaN shares, then NaN in metrics.json
        with pytest.raises(ValueError, match="the images hold no M: they cannot be weighted to a prevalence"):
            stated_shares(stated, classes, np.array([10, 30, 0, 50]))


def test_at_a_stated_prevalence_a_positive_call_is_right_as_bayes_says_and_sensitivity_does_not_move():
    """A balanced test set says nothing about how often a positive call is right at a site where 10% are
    positive: PPV = sens·π / (sens·π + (1 - spec)(1 - π)). The weighted counts give exactly that."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 200)
    p = np.clip(np.where(labels == 1, rng.normal(0.7, 0.2, 400), rng.normal(0.3, 0.2, 400)), 0.01, 0.99)
    probabilities = np.stack([1 - p, p], axis=1)
    decision = Decision("PNEUMONIA", 0.5)
    plain = classification_metrics(labels, probabilities, ("NORMAL", "PNEUMONIA"), decision)
    sens, spec = plain["sensitivity"], plain["specificity"]
    site = at_prevalence(labels, probabilities, ("NORMAL", "PNEUMONIA"), np.array([0.9, 0.1]), decision)
    assert site["precision"]["PNEUMONIA"] == pytest.approx(sens * 0.1 / (sens * 0.1 + (1 - spec) * 0.9))
    assert site["precision"]["NORMAL"] == pytest.approx(spec * 0.9 / (spec * 0.9 + (1 - sens) * 0.1))
    assert site["accuracy"] == pytest.approx(0.1 * sens + 0.9 * spec)
    assert site["shares"] == {"NORMAL": 0.9, "PNEUMONIA": 0.1}
    assert site["precision"]["PNEUMONIA"] < plain["per_class"]["PNEUMONIA"]["precision"]  # rarer: fewer right
