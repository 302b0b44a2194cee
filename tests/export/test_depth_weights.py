"""An FP16 or INT8 file's unfamiliarity is set on the verification images as that file computes its features."""

from __future__ import annotations

import numpy as np
import pytest

from medclf.export import pipeline
from medclf.export.report import familiarity_lines
from medclf.runtime import Classifier, load_image
from medclf.train.fit import FitConfig
from medclf.train.pipeline import Recipe, train


@pytest.fixture(scope="module")
def squeezenet_export(blood_cells, tmp_path_factory):
    """A SqueezeNet-style model from scratch, one epoch on 40 cells a class: its INT8 feature maps sit far from
    the float ones where its training images hardly vary (measured: the INT8 file, set by FP32's scales, flagged
    every verification image)."""
    run, out = tmp_path_factory.mktemp("squeezenet"), tmp_path_factory.mktemp("squeezenet_out")
    recipe = Recipe(arch="squeezenet", image_size=64, val_split=0.5,
                    fit=FitConfig(epochs=1, head_epochs=1, augment_views=0))
    train(blood_cells / "TRAIN", run, recipe, limit_per_class=40, cache_dir=None)
    return out, pipeline.export_run(run / "model.keras", out, ("fp32", "int8"), strict=False)


def test_int8_flags_as_few_verification_images_as_fp32_and_still_every_chest_film(squeezenet_export, chest_xray):
    out, report = squeezenet_export
    int8 = report["precisions"]["int8"]
    assert int8["passed"] and len(int8["familiarity_weights"]) == len(report["familiarity"]["levels"])
    assert int8["unlike_training"] <= 0.02 and report["precisions"]["fp32"]["unlike_training"] <= 0.02
    classifier = Classifier(out / "model.int8.onnx")
    films = [str(p) for p in sorted((chest_xray / "test").glob("*/*.jpeg"))[::20]]
    images = np.stack([load_image(p, classifier.card.preprocess) for p in films])
    assert np.mean(classifier.unfamiliarity(images) > 1) >= 0.9


def test_the_export_says_which_depths_of_a_file_sat_apart_from_fp32(squeezenet_export):
    _, report = squeezenet_export
    (line,) = [line for line in familiarity_lines(report) if line.startswith("int8:")]
    assert "probabilities" in line and "farther off than FP32" in line
    assert not [line for line in familiarity_lines(report) if line.startswith("fp32:")]
