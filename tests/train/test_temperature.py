"""Temperature scaling: fitted on validation, it makes an underconfident model's probabilities honest without
changing one call, and lives inside the model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medclf.rundir import RunDir
from medclf.runtime import load_image
from medclf.train.architectures import get_architecture
from medclf.train.evaluate import expected_calibration_error
from medclf.train.fit import FitConfig
from medclf.train.pipeline import Recipe, train
from medclf.train.temperature import fit_bias_corrected, fit_temperature, fold_temperature, scaled


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def calibrated_draws(images: int, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits, and labels drawn from the probabilities they give: a perfectly calibrated model's answers."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.5, (images, classes))
    labels = np.array([rng.choice(classes, p=p) for p in softmax(logits)])
    return logits, labels


def test_an_underconfident_models_temperature_is_found_and_undoes_it():
    logits, labels = calibrated_draws(4000)
    soft = softmax(logits / 2)  # what mixup and label smoothing do: the same ranking, half as sure
    temperature = fit_temperature(labels, soft)
    assert temperature == pytest.approx(0.5, rel=0.1)
    fixed = scaled(soft, temperature)
    assert expected_calibration_error(labels, fixed) < expected_calibration_error(labels, soft) / 2
    assert (fixed.argmax(axis=1) == soft.argmax(axis=1)).all()  # not one call changes
    assert fit_temperature(labels, softmax(logits)) == pytest.approx(1.0, rel=0.1)  # calibrated: left alone


def test_a_site_with_other_class_proportions_gets_the_log_of_their_ratio_as_its_bias():
    """Bayes: at a site where class k is r_k times as common, p(k | image) moves by log r_k in the logits; the
    bias-corrected fit finds that ratio (and the temperature) from the site's labels alone."""
    logits, _ = calibrated_draws(6000, classes=3, seed=2)
    prior_ratio = np.array([1.0, 0.2, 3.0])  # the site: class 1 five times rarer, class 2 three times commoner
    rng = np.random.default_rng(3)
    labels = np.array([rng.choice(3, p=p) for p in softmax(logits + np.log(prior_ratio))])
    soft = softmax(logits / 2)  # the model, trained elsewhere: underconfident and unaware of the site's mix
    temperature, bias = fit_bias_corrected(labels, soft)
    assert temperature == pytest.approx(0.5, rel=0.1)
    np.testing.assert_allclose(bias, np.log(prior_ratio), atol=0.15)
    fixed = scaled(soft, temperature, bias)
    assert np.mean(fixed.argmax(axis=1) == labels) > np.mean(soft.argmax(axis=1) == labels)  # the calls move
    assert expected_calibration_error(labels, fixed) < expected_calibration_error(labels, scaled(
        soft, fit_temperature(labels, soft)))  # which no temperature can do


def test_a_rare_class_does_not_stop_the_temperature_of_the_others():
    """One scalar, fitted on every image: three validation images of a fourth class leave it well determined."""
    logits, labels = calibrated_draws(4000)
    kept = np.concatenate([np.flatnonzero(labels != 3), np.flatnonzero(labels == 3)[:3]])
    assert fit_temperature(labels[kept], softmax(logits[kept] / 2)) == pytest.approx(0.5, rel=0.1)
    assert fit_bias_corrected(labels[kept], softmax(logits[kept] / 2)) is None  # a bias of 3 images: no


def test_no_temperature_from_too_few_images_of_a_class_or_from_a_perfectly_called_validation_set():
    logits, labels = calibrated_draws(400, classes=2)
    few = np.concatenate([np.flatnonzero(labels == 0)[:29], np.flatnonzero(labels == 1)])
    assert fit_temperature(labels[few], softmax(logits[few])) is None
    assert fit_bias_corrected(labels[few], softmax(logits[few])) is None
    perfect = softmax(np.eye(2)[labels] * 3.0)  # every image called right: "infinitely sure" would fit best
    assert fit_temperature(labels, perfect) is None and fit_bias_corrected(labels, perfect) is None


def test_folded_into_the_output_layer_the_model_answers_the_scaled_probabilities():
    model = get_architecture("small_cnn").build((32, 32, 3), 3, pretrained=False)
    images = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3)).astype(np.float32)
    layer = model.get_layer("probabilities")
    layer.kernel.assign(layer.kernel.numpy() * 20)  # a random model answers near 1/3: make it say something
    before = np.asarray(model.predict(images, verbose=0))
    fold_temperature(model, 0.4)
    after = np.asarray(model.predict(images, verbose=0))
    np.testing.assert_allclose(after, scaled(before, 0.4), atol=1e-5)
    assert (after.argmax(axis=1) == before.argmax(axis=1)).all() and after.max() > before.max()


def test_a_trained_model_answers_its_validation_images_with_no_temperature_left_to_fit(chest_xray, tmp_path):
    """Training fits the temperature on validation and folds it into model.keras, the file every export reads."""
    recipe = Recipe(arch="mobilenet_025", image_size=64, val_split=0.3,
                    fit=FitConfig(epochs=2, head_epochs=2, augment_views=0))
    result = train(chest_xray / "train", tmp_path, recipe, limit_per_class=40)
    temperature = result.metrics["training"]["temperature"]
    assert temperature is not None and temperature != 1.0
    run = RunDir(tmp_path)
    paths, labels = run.split("val")
    images = np.stack([load_image(path, run.preprocess) for path in paths]).astype(np.float32)
    model = keras.models.load_model(tmp_path / "model.keras", compile=False)
    probabilities = np.asarray(model.predict(images, verbose=0))
    assert fit_temperature(np.array(labels), probabilities) == pytest.approx(1.0, abs=0.02)
    assert result.metrics["validation"]["expected_calibration_error"] == pytest.approx(
        expected_calibration_error(np.array(labels), probabilities), abs=1e-4)
