"""Single-image latency, side by side: medclf's runtime vs Keras ``predict_on_batch``, and decoding alone (a
blood-cell JPEG, and a camera-size radiograph decoded at full size and shrunk by libjpeg for a 224-px model).

Rounds are explicit and warmed up: pytest-benchmark sizes its rounds from the first call, and Keras' first call
traces its graph (~1 s), which left the Keras side with five rounds and a minimum that still held start-up cost.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medclf.runtime import Preprocess, load_image


def test_decode_and_resize(benchmark, classifier, image_paths):
    benchmark.pedantic(load_image, args=(image_paths[0], classifier.card.preprocess), rounds=200, warmup_rounds=10)


def test_medclf_one_image(benchmark, classifier, images):
    benchmark.pedantic(classifier.predict, args=(images[:1],), rounds=200, warmup_rounds=10)


def test_keras_predict_on_batch_one_image(benchmark, keras_model, images):
    batch = images[:1].astype(np.float32)
    benchmark.pedantic(keras_model.predict_on_batch, args=(batch,), rounds=60, warmup_rounds=5)


@pytest.mark.parametrize("shrink", [False, True], ids=["full", "shrunk"])
def test_decode_big_jpeg(benchmark, big_radiograph, shrink):
    spec = dataclasses.replace(Preprocess(224, 224), shrink_jpeg=shrink)
    benchmark.pedantic(load_image, args=(big_radiograph, spec), rounds=30, warmup_rounds=2)
