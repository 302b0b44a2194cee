"""``medclf calibrate``: a site chooses its own threshold on its own labelled images, and gets a copy of the model
that calls by it, with an honest estimate of what the new threshold is worth."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_curve
from typer.testing import CliRunner

from medclf.runtime import Classifier, ModelCard, Preprocess
from medclf.runtime.decision import Decision
from medclf.train.calibrate import calibrate_site, write_calibrated
from medclf.train.cli import app
from medclf.train.data import load_arrays, read_folder
from medclf.train.evaluate import classification_metrics
from tests.conftest import REPO
from tests.onnx_graphs import brightness_model

CARD = ModelCard(labels=("NORMAL", "PNEUMONIA"), preprocess=Preprocess(8, 8, color="grey"),
                 decision=Decision("PNEUMONIA", 0.5))


def site_folder(chest_xray, tmp_path, per_class: int):
    """A site's labelled films: the first ``per_class`` real test X-rays of each class."""
    for name in CARD.labels:
        (tmp_path / "site" / name).mkdir(parents=True)
        for path in sorted((chest_xray / "test" / name).iterdir())[:per_class]:
            shutil.copy(path, tmp_path / "site" / name / path.name)
    return tmp_path / "site"


@pytest.fixture
def model(tmp_path):
    """A real ONNX graph whose p(PNEUMONIA) is a film's mean brightness, with the training site's 0.5."""
    return brightness_model(tmp_path / "model.onnx", CARD)


def test_the_site_threshold_maximises_youden_on_the_sites_films_and_its_worth_is_estimated_on_held_out_halves(
        chest_xray, tmp_path, model):
    site = site_folder(chest_xray, tmp_path, 64)
    calibration = calibrate_site(model, site)
    images, labels, _ = load_arrays(read_folder(site, CARD.labels), CARD.preprocess)
    p = Classifier(model).predict(images)[:, 1]
    fpr, tpr, thresholds = roc_curve(labels == 1, p)
    at_chosen = np.mean(p[labels == 1] >= calibration.decision.threshold) - \
        np.mean(p[labels == 0] >= calibration.decision.threshold)
    assert at_chosen == pytest.approx(np.max(tpr - fpr))
    assert calibration.images == 128 and calibration.before["threshold"] == 0.5
    assert calibration.before["accuracy"] == pytest.approx(np.mean((p >= 0.5) == (labels == 1)))
    assert calibration.estimate["splits"] == 10
    assert 0.0 < calibration.estimate["accuracy"]["std"] < calibration.estimate["accuracy"]["mean"] <= 1.0
    assert "at the site on 128 images of site" in calibration.decision.rule


def test_a_target_sensitivity_is_reached_on_the_sites_films(chest_xray, tmp_path, model):
    site = site_folder(chest_xray, tmp_path, 40)
    calibration = calibrate_site(model, site, target_sensitivity=0.9)
    images, labels, _ = load_arrays(read_folder(site, CARD.labels), CARD.preprocess)
    metrics = classification_metrics(labels, Classifier(model).predict(images), CARD.labels, calibration.decision)
    assert metrics["sensitivity"] >= 0.9
    assert calibration.estimate is None  # 40 of a class: too few to choose on one half and score the other


def test_the_calibrated_copy_carries_the_new_threshold_and_the_original_is_untouched(chest_xray, tmp_path, model):
    original = (tmp_path / "model.onnx").read_bytes()
    calibration = calibrate_site(model, site_folder(chest_xray, tmp_path, 30))
    write_calibrated(model, tmp_path / "model.site.onnx", calibration.decision, calibration.record("site"))
    card = Classifier(tmp_path / "model.site.onnx").card
    assert card.decision == calibration.decision and card.decision.threshold != 0.5
    assert card.labels == CARD.labels and card.preprocess == CARD.preprocess
    assert card.metrics["site"]["images"] == 60
    assert (tmp_path / "model.onnx").read_bytes() == original
    with pytest.raises(ValueError, match="must be a new file"):
        write_calibrated(model, tmp_path / "model.onnx", calibration.decision, {})


def test_too_few_films_of_a_class_and_multi_class_models_are_refused_with_the_reason(chest_xray, tmp_path, model):
    with pytest.raises(ValueError, match="12 images of NORMAL.*at least 30"):
        calibrate_site(model, site_folder(chest_xray, tmp_path, 12))
    four_classes = REPO / "runtime" / "models" / "blood_cells" / "model.onnx"
    with pytest.raises(ValueError, match="binary models; this one has 4 classes"):
        calibrate_site(four_classes, tmp_path / "site")


def test_the_command_prints_before_and_estimate_and_writes_the_copy_and_its_record(chest_xray, tmp_path, model):
    site = site_folder(chest_xray, tmp_path, 64)
    result = CliRunner().invoke(app, ["calibrate", model, str(site)])
    assert result.exit_code == 0, result.output
    assert "at the model's threshold (0.5), 128 site images: accuracy" in result.output
    assert "scored on the other half, 10 splits" in result.output
    assert Classifier(tmp_path / "model.site.onnx").card.decision.threshold != 0.5
    assert (tmp_path / "model.site.json").is_file()
    refused = CliRunner().invoke(app, ["calibrate", str(REPO / "runtime/models/blood_cells/model.onnx"), str(site)])
    assert refused.exit_code == 1 and "binary models" in refused.output and "Traceback" not in refused.output
