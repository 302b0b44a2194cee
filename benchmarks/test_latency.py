"""Single-image latency, side by side: medclf's runtime vs Keras ``predict_on_batch``, and decoding alone."""

from __future__ import annotations

import numpy as np

from medclf.runtime import load_image


def test_decode_and_resize(benchmark, classifier, image_paths):
    benchmark(load_image, image_paths[0], classifier.card.preprocess)


def test_medclf_one_image(benchmark, classifier, images):
    benchmark(classifier.predict, images[:1])


def test_keras_predict_on_batch_one_image(benchmark, keras_model, images):
    batch = images[:1].astype(np.float32)
    benchmark(keras_model.predict_on_batch, batch)
