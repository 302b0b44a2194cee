"""Single-image latency: medclf's runtime vs the plain Keras way, side by side in one run.

Run: ``.venv/bin/python -m pytest benchmarks --benchmark-only --benchmark-json=.benchmarks/latency.json``
(the test suite skips benchmarks). Keras loads the very model the ONNX file was exported from
when ``MEDCLF_KERAS_MODEL`` names it; otherwise the same architecture is built (speed does not depend on weights).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medclf.runtime import DEFAULT_MODEL, Classifier, load_image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "blood-cells" / "TEST"
pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL.is_file() and SHARED.is_dir()),
                                reason="needs the packaged model and ../shared/data/blood-cells")


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier()


@pytest.fixture(scope="module")
def image_path() -> Path:
    return next((SHARED / "EOSINOPHIL").iterdir())


@pytest.fixture(scope="module")
def keras_model(classifier):
    keras = pytest.importorskip("keras")
    if "MEDCLF_KERAS_MODEL" in os.environ:
        return keras.models.load_model(os.environ["MEDCLF_KERAS_MODEL"])
    from medclf.train.architectures import get_architecture

    arch = classifier.card.metrics.get("training", {}).get("architecture", "mobilenet_v2")
    return get_architecture(arch).build(classifier.card.preprocess.shape, len(classifier.labels), False)


def test_decode_and_resize(benchmark, classifier, image_path):
    benchmark(load_image, image_path, classifier.card.preprocess)


def test_medclf_runtime_one_image(benchmark, classifier, image_path):
    image = load_image(image_path, classifier.card.preprocess)[None]
    benchmark(classifier.predict, image)


def test_keras_predict_on_batch_one_image(benchmark, classifier, keras_model, image_path):
    image = load_image(image_path, classifier.card.preprocess)[None].astype(np.float32)
    benchmark(keras_model.predict_on_batch, image)
