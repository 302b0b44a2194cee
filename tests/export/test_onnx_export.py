"""Export: the ONNX file keeps the contract (uint8 in, probabilities out, card inside) and matches Keras."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from medclf.export import pipeline
from medclf.export.verify import Tolerance, VerificationError, compare
from medclf.rundir import RunDir
from medclf.runtime import Classifier, load_image
from medclf.train.fit import FitConfig
from medclf.train.pipeline import Recipe, predict, train


@pytest.fixture(scope="module")
def run_dir(blood_cells, tmp_path_factory):
    """A tiny real model: MobileNet 0.25 at 64 px, 12 blood-cell images per class, one epoch."""
    out = tmp_path_factory.mktemp("run")
    recipe = Recipe(arch="mobilenet_025", image_size=64, val_split=0.5,
                    fit=FitConfig(epochs=1, head_epochs=1, augment_views=1))
    train(blood_cells / "TRAIN", out, recipe, limit_per_class=12, cache_dir=None)
    return out


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    return out, pipeline.export_run(run_dir / "model.keras", out)


def test_the_graph_takes_uint8_pixels_with_a_dynamic_batch(exported):
    model = onnx.load(str(exported[0] / "model.onnx"))
    (image,), (probabilities,) = model.graph.input, model.graph.output
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = image.type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value") and [d.dim_value for d in dims[1:]] == [64, 64, 3]
    assert probabilities.name == "probabilities"
    assert probabilities.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_the_file_carries_labels_preprocessing_and_provenance(exported, run_dir):
    card = Classifier(exported[0] / "model.onnx").card
    assert list(card.labels) == json.loads((run_dir / "labels.json").read_text())
    assert (card.preprocess.height, card.preprocess.width, card.preprocess.color) == (64, 64, "rgb")
    assert card.precision == "fp32" and len(card.source["keras_sha256"]) == 64
    assert card.metrics["validation"]["images"] > 0


def test_the_report_says_it_was_verified_on_real_held_out_images(exported):
    report = json.loads((exported[0] / "export_report.json").read_text())
    assert report == exported[1]
    assert report["passed"] and report["agreement"] == 1.0 and report["max_abs_diff"] <= 1e-4
    assert report["images"] == 48 and "validation" in report["verified_on"]


def test_onnx_matches_keras_on_unseen_test_images(exported, run_dir, blood_cell_images):
    import keras

    classifier = Classifier(exported[0] / "model.onnx")
    images = np.stack([load_image(p, classifier.card.preprocess) for p in blood_cell_images])
    keras_p = predict(keras.models.load_model(run_dir / "model.keras"), images)
    comparison = compare(keras_p, classifier.predict(images), Tolerance(1.0, 1e-4))
    assert comparison.passed, comparison.failures


def test_a_file_that_fails_verification_is_not_published(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(pipeline.TOLERANCES, "fp32", Tolerance(min_agreement=1.0, max_abs_diff=-1.0))
    with pytest.raises(VerificationError, match="model.onnx not written"):
        pipeline.export_run(run_dir / "model.keras", tmp_path)
    assert not (tmp_path / "model.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["export_report.json"]
    assert json.loads((tmp_path / "export_report.json").read_text())["passed"] is False


def test_compare_flags_disagreement_and_nan():
    reference = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    flipped = compare(reference, reference[:, ::-1], Tolerance(1.0, 1e-4))
    assert flipped.agreement == 0.0 and len(flipped.failures) == 2
    assert not compare(reference, np.full_like(reference, np.nan), Tolerance(0.0, 1.0)).passed


def test_a_binary_models_threshold_travels_into_the_onnx_file_and_the_runtime_calls_by_it(cataract, tmp_path):
    recipe = Recipe(arch="mobilenet_025", image_size=64, val_split=0.5, target_sensitivity=1.0,
                    fit=FitConfig(epochs=1, head_epochs=1, augment_views=0))
    train(cataract, tmp_path / "run", recipe)
    pipeline.export_run(tmp_path / "run" / "model.keras", tmp_path / "out")
    classifier = Classifier(tmp_path / "out" / "model.onnx")
    decision = RunDir(tmp_path / "run").decision
    assert classifier.card.decision == decision and decision.rule == "sensitivity>=1"
    paths = [str(p) for p in sorted((cataract / "cataract").iterdir())[:6]]
    calls = [p.label for p in classifier.classify(paths)]
    images = np.stack([load_image(p, classifier.card.preprocess) for p in paths])
    p_cataract = classifier.predict(images)[:, classifier.labels.index("cataract")]
    assert calls == ["cataract" if p >= decision.threshold else "normal" for p in p_cataract]
