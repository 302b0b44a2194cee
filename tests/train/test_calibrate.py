"""``medclf calibrate``: a site fits its own temperature, class bias and threshold on its own labelled images, and
gets a copy of the model that answers by them, with an honest estimate of what they are worth."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
from sklearn.metrics import roc_curve
from sklearn.model_selection import StratifiedGroupKFold
from typer.testing import CliRunner

from medclf.runtime import Classifier, ModelCard, Preprocess
from medclf.runtime.decision import Decision
from medclf.train.calibrate import SiteCalibration, calibrate_site, write_calibrated
from medclf.train.cli import app
from medclf.train.data import load_arrays, read_folder
from medclf.train.evaluate import classification_metrics, expected_calibration_error
from medclf.train.temperature import fit_bias_corrected, fit_temperature, scaled
from tests.conftest import REPO
from tests.onnx_graphs import brightness_model

CARD = ModelCard(labels=("NORMAL", "PNEUMONIA"), preprocess=Preprocess(8, 8, color="grey"),
                 decision=Decision("PNEUMONIA", 0.5))


def site_folder(chest_xray, tmp_path, per_class: int):
    """A site's labelled films: ``per_class`` real test X-rays of each class, one a patient (a patient's films
    count once, and the test set's pneumonia patients have several)."""
    from medclf.train.groups import name_key

    for name in CARD.labels:
        (tmp_path / "site" / name).mkdir(parents=True)
        patients = {}
        for path in sorted((chest_xray / "test" / name).iterdir()):
            patients.setdefault(name_key(path.name, name) or path.name, path)
        for path in list(patients.values())[:per_class]:
            shutil.copy(path, tmp_path / "site" / name / path.name)
    return tmp_path / "site"


def as_calibrated(probabilities: np.ndarray, site: SiteCalibration) -> np.ndarray:
    """What the calibrated copy should answer."""
    if site.temperature is None:
        return probabilities
    return scaled(probabilities, site.temperature, np.array(list(site.bias.values())))


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def model(tmp_path):
    """A real ONNX graph whose p(PNEUMONIA) is a film's mean brightness, with the training site's 0.5."""
    return brightness_model(tmp_path / "model.onnx", CARD)


def test_the_site_threshold_maximises_youden_on_the_sites_films_and_its_worth_is_estimated_on_held_out_halves(
        chest_xray, tmp_path, model):
    site = site_folder(chest_xray, tmp_path, 64)
    calibration = calibrate_site(model, site)
    images, labels, _ = load_arrays(read_folder(site, CARD.labels), CARD.preprocess)
    raw = Classifier(model).predict(images)
    p = as_calibrated(raw, calibration)[:, 1]  # the threshold is chosen after any rescaling
    fpr, tpr, thresholds = roc_curve(labels == 1, p)
    at_chosen = np.mean(p[labels == 1] >= calibration.decision.threshold) - \
        np.mean(p[labels == 0] >= calibration.decision.threshold)
    assert at_chosen == pytest.approx(np.max(tpr - fpr))
    assert calibration.images == 128 and calibration.before["threshold"] == 0.5
    assert calibration.before["accuracy"] == pytest.approx(np.mean((raw[:, 1] >= 0.5) == (labels == 1)))
    assert calibration.before["expected_calibration_error"] == pytest.approx(expected_calibration_error(labels, raw))
    assert calibration.estimate["splits"] == 10
    assert 0.0 < calibration.estimate["accuracy"]["std"] < calibration.estimate["accuracy"]["mean"] <= 1.0
    assert 0.0 < calibration.estimate["expected_calibration_error"]["mean"] < 1.0
    assert "at the site on 128 images of site" in calibration.decision.rule


def test_the_reliability_picture_shows_each_image_as_calibrated_by_the_half_it_is_not_in():
    """An in-sample curve would flatter the site's fit: the 'after' curve of the picture is cross-fitted."""
    from medclf.train.calibrate import _split_half

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2.5, (400, 2))
    labels = np.array([rng.choice(2, p=p) for p in np.exp(logits) / np.exp(logits).sum(1, keepdims=True)])
    soft = np.exp(logits / 2) / np.exp(logits / 2).sum(1, keepdims=True)  # underconfident: a scaling to fit
    estimate, cross_fitted = _split_half(labels, soft, CARD.labels, None, None)
    halves = StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=0).split(labels, labels, np.arange(400))
    for fit, score in halves:
        np.testing.assert_allclose(cross_fitted[score], scaled(soft[score], *fit_bias_corrected(labels[fit],
                                                                                                soft[fit])))
    assert estimate["splits"] == 10 and not np.allclose(cross_fitted, soft)


def test_a_target_sensitivity_is_reached_on_the_sites_films(chest_xray, tmp_path, model):
    site = site_folder(chest_xray, tmp_path, 40)
    calibration = calibrate_site(model, site, target_sensitivity=0.9)
    images, labels, _ = load_arrays(read_folder(site, CARD.labels), CARD.preprocess)
    calibrated = as_calibrated(Classifier(model).predict(images), calibration)
    metrics = classification_metrics(labels, calibrated, CARD.labels, calibration.decision)
    assert metrics["sensitivity"] >= 0.9
    assert calibration.estimate is None  # 40 of a class: too few to choose on one half and score the other


def test_the_calibrated_copy_answers_with_the_new_temperature_and_threshold_and_the_original_is_untouched(
        chest_xray, tmp_path, model):
    original = (tmp_path / "model.onnx").read_bytes()
    site = site_folder(chest_xray, tmp_path, 30)
    calibration = replace(calibrate_site(model, site), temperature=0.4,  # brightness has none to fit: say them
                          bias={"NORMAL": 0.0, "PNEUMONIA": -1.2})
    write_calibrated(model, tmp_path / "model.site.onnx", calibration, calibration.record("site"))
    copy = Classifier(tmp_path / "model.site.onnx")
    card = copy.card
    assert card.decision == calibration.decision and card.decision.threshold != 0.5
    assert card.labels == CARD.labels and card.preprocess == CARD.preprocess
    assert card.metrics["site"]["images"] == 60 and card.metrics["site"]["temperature"] == calibration.temperature
    assert card.metrics["site"]["bias"] == calibration.bias
    images, _, _ = load_arrays(read_folder(site, CARD.labels), CARD.preprocess)
    np.testing.assert_allclose(copy.predict(images), as_calibrated(Classifier(model).predict(images), calibration),
                               atol=1e-5)
    assert (tmp_path / "model.onnx").read_bytes() == original
    with pytest.raises(ValueError, match="must be a new file"):
        write_calibrated(model, tmp_path / "model.onnx", calibration, {})
    write_calibrated(tmp_path / "model.site.onnx", tmp_path / "again.onnx", calibration, {})  # on top: new names
    np.testing.assert_allclose(Classifier(tmp_path / "again.onnx").predict(images),
                               as_calibrated(copy.predict(images), calibration), atol=1e-5)


def blood_site(blood_cells, tmp_path, per_class: int = 30):
    """A site's labelled smears: every 20th real TEST cell image of each class (TEST is copies of 100 cells)."""
    site = tmp_path / "site"
    for folder in sorted((blood_cells / "TEST").iterdir()):
        (site / folder.name).mkdir(parents=True)
        for path in sorted(folder.iterdir())[::20][:per_class]:
            (site / folder.name / path.name).symlink_to(path)
    return site


def test_a_multi_class_model_gets_the_sites_temperature_and_class_bias_and_calls_the_most_probable(
        blood_cells, tmp_path):
    site = blood_site(blood_cells, tmp_path)
    packaged = REPO / "runtime" / "models" / "blood_cells" / "model.onnx"
    calibration = calibrate_site(packaged, site, group_copies=False)  # as if each image were another cell
    assert calibration.decision is None and calibration.temperature is not None
    assert list(calibration.bias) == list(Classifier(packaged).labels) and calibration.bias["EOSINOPHIL"] == 0.0
    assert set(calibration.before) == {"accuracy", "expected_calibration_error", "log_loss"}
    write_calibrated(packaged, tmp_path / "cells.site.onnx", calibration, calibration.record("site"))
    copy = Classifier(tmp_path / "cells.site.onnx")
    images, _, _ = load_arrays(read_folder(site, copy.labels), copy.card.preprocess)
    np.testing.assert_allclose(copy.predict(images), as_calibrated(Classifier(packaged).predict(images),
                                                                   calibration), atol=1e-5)
    assert copy.card.decision is None
    neutrophils = calibrate_site(packaged, site, group_copies=False, prevalence={"NEUTROPHIL": 0.6})
    moved = np.array(list(neutrophils.bias.values())) - np.array(list(calibration.bias.values()))
    np.testing.assert_allclose(moved, np.log([0.4 / 3 / 0.25] * 3 + [0.6 / 0.25]) - np.log(0.4 / 3 / 0.25),
                               atol=2e-4)  # 30 of each class held: the others share 40% equally
    alone = calibrate_site(packaged, site, group_copies=False, class_bias=False)  # a collection, not a series
    raw = Classifier(packaged).predict(images)
    _, labels, _ = load_arrays(read_folder(site, copy.labels), copy.card.preprocess)
    assert alone.temperature == fit_temperature(labels, raw) and set(alone.bias.values()) == {0.0}
    with pytest.raises(ValueError, match="target sensitivity is for binary models; this one has 4 classes"):
        calibrate_site(packaged, site, target_sensitivity=0.9)


def test_copies_of_one_cell_count_once_so_a_site_of_few_cells_is_refused(blood_cells, tmp_path):
    """120 images that are augmented copies of a few cells (found by looking, as training does) tell a
    temperature and a bias no more than those few cells would."""
    with pytest.raises(ValueError, match=r"\d+ independent images of \w+ \(.*copies of one image count once\).*at "
                                         "least 30"):
        calibrate_site(REPO / "runtime" / "models" / "blood_cells" / "model.onnx", blood_site(blood_cells, tmp_path))


def test_too_few_films_of_a_class_are_refused_with_the_reason(chest_xray, tmp_path, model):
    with pytest.raises(ValueError, match="12 images of NORMAL.*at least 30"):
        calibrate_site(model, site_folder(chest_xray, tmp_path, 12))


def test_the_command_prints_before_and_estimate_and_writes_the_copy_and_its_record(chest_xray, tmp_path, model,
                                                                                 caplog):
    site = site_folder(chest_xray, tmp_path, 64)
    result = CliRunner().invoke(app, ["calibrate", model, str(site)])
    assert result.exit_code == 0, result.output
    assert "as the model stands, 128 site images: threshold 0.5, accuracy" in result.output
    assert "calibration error 0." in result.output  # brightness is no probability: no temperature fits it
    assert "new: no temperature or bias (the site's images cannot tell them), threshold" in result.output
    assert "no better than the model" not in result.output  # nothing was scaled: no advice on scaling
    assert "log loss 0." in result.output
    assert "scored on the other half, 10 splits" in result.output
    assert "holds as many images of each class (64-64)" in caplog.text  # collected, perhaps: said
    assert Classifier(tmp_path / "model.site.onnx").card.decision.threshold != 0.5
    assert (tmp_path / "model.site.json").is_file()
    assert (tmp_path / "model.site.png").stat().st_size > 1000 and "(reliability before and after)" in result.output
    few = CliRunner().invoke(app, ["calibrate", model, str(site_folder(chest_xray, tmp_path / "few", 40)),
                                   "--out", str(tmp_path / "model.site.onnx")])  # another site's, replaced as asked
    assert few.exit_code == 0 and "too few images to estimate" in few.output
    assert not (tmp_path / "model.site.png").exists()  # the earlier picture is not left to describe this copy
    assert "removed" in few.output and "model.site.png" in few.output
    refused = CliRunner().invoke(app, ["calibrate", str(REPO / "runtime/models/blood_cells/model.onnx"), str(site),
                                       "--target-sensitivity", "0.9"], terminal_width=200)
    assert refused.exit_code == 1 and "binary models" in refused.output and "Traceback" not in refused.output


def test_scoring_a_calibrated_copy_on_the_images_it_was_calibrated_on_says_the_scores_are_in_sample(
        chest_xray, tmp_path, model, caplog):
    """Its temperature, bias and threshold were fitted on them: flattered scores, which were reported as if unseen."""
    from medclf.train.pipeline import evaluate_run

    site = site_folder(chest_xray, tmp_path, 64)
    assert CliRunner().invoke(app, ["calibrate", model, str(site)]).exit_code == 0
    with caplog.at_level("WARNING"):
        scored = evaluate_run(tmp_path / "model.site.onnx", site)
    assert scored["calibrated_on_these_images"] == str(site.resolve())
    assert "was calibrated (medclf calibrate) on" in caplog.text and "not those of unseen ones" in caplog.text
    caplog.clear()
    other = evaluate_run(tmp_path / "model.site.onnx", site_folder(chest_xray, tmp_path / "other", 40))
    assert "calibrated_on_these_images" not in other and "was calibrated" not in caplog.text


def test_a_second_sites_calibration_is_written_beside_the_firsts_not_over_it(chest_xray, tmp_path, model):
    """siteB after siteA both took model.site.onnx: siteA's calibrated copy was gone without a word. Calibrating
    a site again replaces its own copy; refusing --out MODEL comes before any work (its picture was drawn)."""
    first, second = site_folder(chest_xray, tmp_path / "A", 40), site_folder(chest_xray, tmp_path / "B", 40)
    for site in (first, second, first):
        assert CliRunner().invoke(app, ["calibrate", model, str(site)]).exit_code == 0
    from medclf.train.calibrate import calibrated_site

    assert calibrated_site(tmp_path / "model.site.onnx")["data_path"] == str(first.resolve())
    assert calibrated_site(tmp_path / "model.site-2.onnx")["data_path"] == str(second.resolve())
    assert not (tmp_path / "model.site-3.onnx").exists()
    import json

    import onnx

    from medclf.train.calibrate import calibration_file

    older = onnx.load(str(tmp_path / "model.site.onnx"))  # a copy written before cards named the site's folder
    for prop in older.metadata_props:
        if prop.key == "medclf.metrics":
            metrics = json.loads(prop.value)
            del metrics["site"]["data_path"]
            prop.value = json.dumps(metrics)
    (tmp_path / "older").mkdir()
    onnx.save(older, str(tmp_path / "older" / "model.site.onnx"))
    assert calibration_file(tmp_path / "older" / "model.site.onnx", first).name == "model.site-2.onnx"
    refused = CliRunner().invoke(app, ["calibrate", model, str(first), "--out", model])
    assert refused.exit_code == 2 and "must be a new file" in refused.output
    assert not (tmp_path / "model.png").exists()


def test_a_picture_of_the_users_beside_a_new_out_file_is_never_removed(chest_xray, tmp_path, model):
    """Only the picture of a calibration this one replaces may go: --out report.onnx beside the user's own
    report.png (no calibrated copy there before) leaves it alone."""
    own = tmp_path / "report.png"
    own.write_bytes(b"the user's own picture")
    few = CliRunner().invoke(app, ["calibrate", model, str(site_folder(chest_xray, tmp_path / "few", 40)),
                                   "--out", str(tmp_path / "report.onnx")])
    assert few.exit_code == 0 and "too few images to estimate" in few.output, few.output
    assert own.read_bytes() == b"the user's own picture" and "removed" not in few.output


def test_a_stated_prevalence_gives_a_collected_sample_the_bias_a_consecutive_series_would_have_given():
    """A site whose cases are 10% positive labels 50/50 of them: stated, the 10% replaces the sample's 50%."""
    from medclf.train.calibrate import _fit_at_prevalence

    rng = np.random.default_rng(4)
    logits = rng.normal(0, 2.5, (40000, 2))
    labels = np.array([rng.choice(2, p=p) for p in softmax(logits + np.log([1.0, 0.15]))])  # ~10% positive
    soft = softmax(logits / 2)  # trained elsewhere: underconfident, another prevalence
    series = fit_bias_corrected(labels, soft)
    positives = np.flatnonzero(labels == 1)
    collected = np.concatenate([positives, rng.choice(np.flatnonzero(labels == 0), len(positives), replace=False)])
    prevalence = np.mean(labels == 1)
    temperature, bias = _fit_at_prevalence(labels[collected], soft[collected],
                                           np.array([1 - prevalence, prevalence]))
    assert temperature == pytest.approx(series[0], rel=0.05)
    assert bias[1] == pytest.approx(series[1][1], abs=0.1)
    as_collected = fit_bias_corrected(labels[collected], soft[collected])[1]
    assert as_collected[1] - bias[1] == pytest.approx(np.log(0.5 / prevalence) - np.log(0.5 / (1 - prevalence)),
                                                      abs=1e-3)


def test_at_a_stated_prevalence_the_site_reads_its_metrics_weighted_to_it(chest_xray, tmp_path, model, caplog):
    site = site_folder(chest_xray, tmp_path, 64)
    result = CliRunner().invoke(app, ["calibrate", model, str(site), "--prevalence", "PNEUMONIA=10%"])
    assert result.exit_code == 0, result.output
    assert ("at the stated prevalence (NORMAL 90.0%, PNEUMONIA 10.0%; the site images hold NORMAL 50.0%, "
            "PNEUMONIA 50.0%)") in result.output
    assert "holds as many images of each class" not in caplog.text  # stated: nothing to warn about
    card = Classifier(tmp_path / "model.site.onnx").card
    assert card.metrics["site"]["prevalence"]["stated"] == {"NORMAL": 0.9, "PNEUMONIA": 0.1}
    images, labels, _ = load_arrays(read_folder(site, CARD.labels), CARD.preprocess)
    called = Classifier(model).predict(images)[:, 1] >= 0.5
    weights = np.where(labels == 1, 0.1 / 0.5, 0.9 / 0.5)
    assert card.metrics["site"]["before"]["accuracy"] == pytest.approx(np.average(called == labels, weights=weights))
    assert card.metrics["site"]["before"]["sensitivity"] == pytest.approx(np.mean(called[labels == 1]))
    for arguments, reason in ((["--prevalence", "PNEUMONIA"], "give CLASS=SHARE"),
                              (["--prevalence", "COVID=0.2"], "prevalence of COVID: not a class of this model"),
                              (["--prevalence", "PNEUMONIA=0.1", "--no-class-bias"], "drop --no-class-bias")):
        refused = CliRunner().invoke(app, ["calibrate", model, str(site), *arguments], terminal_width=200)
        assert refused.exit_code in (1, 2) and reason in refused.output and "Traceback" not in refused.output


def test_a_model_chosen_for_a_sensitivity_keeps_that_rule_at_the_site(chest_xray, tmp_path):
    """A screening model's threshold, chosen for sensitivity 0.95, was chosen again at the site by Youden's J,
    without a word: sensitivity on the site's unseen films fell from 0.90 to 0.67."""
    screening = replace(CARD, decision=Decision("PNEUMONIA", 0.3, rule="sensitivity>=0.9"))
    model = brightness_model(tmp_path / "screening.onnx", screening)
    site = site_folder(chest_xray, tmp_path, 40)
    calibration = calibrate_site(model, site)
    assert calibration.decision.rule.startswith("sensitivity>=0.9, chosen at the site")
    images, labels, _ = load_arrays(read_folder(site, CARD.labels), CARD.preprocess)
    calibrated = as_calibrated(Classifier(model).predict(images), calibration)
    assert classification_metrics(labels, calibrated, CARD.labels, calibration.decision)["sensitivity"] >= 0.9
    assert calibrate_site(model, site, own_rule=False).decision.rule.startswith("youden")  # --youden


def test_unreadable_site_files_do_not_count_towards_the_images_a_class_needs(chest_xray, tmp_path, model):
    """30 NORMAL files of which 3 were text passed the 30-image check, and a copy fitted on 27 was written."""
    site = site_folder(chest_xray, tmp_path, 30)
    for broken in sorted((site / "NORMAL").iterdir())[:3]:
        broken.write_text("not an image")
    with pytest.raises(ValueError, match="27 images of NORMAL.*at least 30"):
        calibrate_site(model, site)


def test_calibrating_a_calibrated_copy_or_on_the_models_training_images_is_said(chest_xray, tmp_path, model,
                                                                                 caplog):
    """Fitted again on top, a copy kept only the last site's record (evaluate could no longer see the first
    site's films were in-sample); fitted on the training films, a calibration learns the training site again."""
    import json

    site = site_folder(chest_xray, tmp_path, 30)
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"the Keras model this file was exported from")
    (run / "labels.json").write_text(json.dumps(list(CARD.labels)))
    (run / "preprocess.json").write_text(CARD.preprocess.to_json())
    films = sorted(str(path) for path in site.rglob("*.jpeg"))
    (run / "splits.json").write_text(json.dumps({"train": {"paths": films, "labels": [0] * len(films)},
                                                 "val": {"paths": [], "labels": []}}))
    from medclf.runtime.describe import file_sha256

    source = {"run_dir": str(run), "keras_sha256": file_sha256(run / "model.keras")}
    trained_on = brightness_model(tmp_path / "trained.onnx", replace(CARD, source=source))
    calibration = calibrate_site(trained_on, site)
    assert f"{len(films)} site image(s) are, byte for byte, this model's training or validation images" in caplog.text
    write_calibrated(model, tmp_path / "model.site.onnx", calibration, calibration.record("site"))
    calibrate_site(tmp_path / "model.site.onnx", site)
    assert "is already calibrated, at site: calibrating it again fits on top" in caplog.text


def test_a_calibrated_int8_copy_is_compared_with_the_fp32_copy_of_the_same_site(chest_xray, tmp_path, model):
    """Against the uncalibrated model.onnx, the site's threshold alone moved calls, which evaluate read as the
    INT8 file drifting below what its export was verified to."""
    from medclf.train.pipeline import evaluate_run

    brightness_model(tmp_path / "model.int8.onnx", replace(CARD, precision="int8"))
    site = site_folder(chest_xray, tmp_path, 64)
    assert CliRunner().invoke(app, ["calibrate", str(tmp_path / "model.int8.onnx"), str(site)]).exit_code == 0
    alone = evaluate_run(tmp_path / "model.int8.site.onnx", site)
    assert "agreement_with_fp32" not in alone  # no FP32 copy of this site: no comparison, rather than a false one
    assert CliRunner().invoke(app, ["calibrate", model, str(site)]).exit_code == 0
    paired = evaluate_run(tmp_path / "model.int8.site.onnx", site)["agreement_with_fp32"]
    assert paired["file"] == str(tmp_path / "model.site.onnx") and paired["agreement"] == 1.0


def test_a_site_whose_class_folders_split_themselves_is_fitted_on_its_training_rows(chest_xray, tmp_path, model):
    """NORMAL/{train,test}, PNEUMONIA/{train,test}: calibrate fitted on the 316 test films, leaving the site no
    unseen images to evaluate the copy on."""
    site = site_folder(chest_xray, tmp_path, 50)
    for name in CARD.labels:
        films = sorted((site / name).iterdir())
        for split, part in (("train", films[:35]), ("test", films[35:])):
            (site / name / split).mkdir()
            for film in part:
                film.rename(site / name / split / film.name)
    assert calibrate_site(model, site).images == 70
