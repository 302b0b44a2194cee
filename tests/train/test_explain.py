"""Grad-CAM points at the evidence: a known-answer model, and every registry architecture."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from medclf.train.architectures import ARCHITECTURES, get_architecture
from medclf.train.explain import GradCam, last_conv_layer


def brightness_model() -> keras.Model:
    """p(bright) grows with the mean of a 1x1 'conv' copy of the image: the evidence is where pixels are bright."""
    inputs = keras.Input((32, 32, 1), name="image")
    x = layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones", name="conv")(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(2, activation="softmax", kernel_initializer=keras.initializers.Constant([[-0.05, 0.05]]),
                           bias_initializer="zeros")(x)
    return keras.Model(inputs, outputs)


def test_the_heatmap_lights_up_where_the_evidence_is():
    image = np.zeros((1, 32, 32, 1), np.uint8)
    image[0, 2:10, 20:30] = 255  # a bright patch, top right
    cam = GradCam(brightness_model())
    assert cam.layer == "conv"
    heatmaps, probabilities = cam(image, [1])
    assert heatmaps.shape == (1, 32, 32) and probabilities[0, 1] > 0.5
    peak = np.unravel_index(heatmaps[0].argmax(), (32, 32))
    assert 2 <= peak[0] < 10 and 20 <= peak[1] < 30
    assert heatmaps[0, 20:, :10].max() == 0.0  # nothing where the image is dark
    against, _ = cam(image, [0])  # the evidence counts against "dark": no positive contribution anywhere
    assert against.max() == 0.0


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_registry_architecture_can_be_explained(name):
    model = get_architecture(name).build((64, 64, 3), 3, False)
    layer = last_conv_layer(model)
    assert len(model.get_layer(layer).output.shape) == 4
    rng = np.random.default_rng(0)
    heatmaps, probabilities = GradCam(model)(rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    assert heatmaps.shape == (2, 64, 64) and np.isfinite(heatmaps).all()
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0 and probabilities.shape == (2, 3)

