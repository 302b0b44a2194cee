"""The registry: every model builds at any size, ImageNet weights load offline, missing weights fail loudly."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medclf.train.architectures import ARCHITECTURES, WeightsNotFoundError, get_architecture
from tests.conftest import needs_weights


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_builds_with_random_weights_at_a_small_size(name):
    model = get_architecture(name).build((48, 64, 3), 5, False)
    out = model(np.full((2, 48, 64, 3), 255.0, np.float32), training=False)
    assert out.shape == (2, 5)
    np.testing.assert_allclose(np.asarray(out).sum(axis=1), 1.0, rtol=1e-5)


@needs_weights
def test_mobilenet_v2_gets_the_same_imagenet_weights_as_keras_applications_at_another_size():
    ours = get_architecture("mobilenet_v2").build((160, 160, 3), 3, True)
    reference = keras.applications.MobileNetV2(include_top=False, weights="imagenet", input_shape=(224, 224, 3))
    for layer in ("Conv1", "block_8_project", "Conv_1_bn"):
        for mine, theirs in zip(ours.get_layer(layer).get_weights(), reference.get_layer(layer).get_weights()):
            np.testing.assert_array_equal(mine, theirs)


@needs_weights
@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_025", "two_backbones"])
def test_a_grey_imagenet_model_is_the_rgb_model_fed_its_grey_image_as_rgb(name):
    """``--grey`` with an ImageNet backbone: one channel in (the runtime decodes grey), repeated inside."""
    keras.utils.set_random_seed(0)
    grey = get_architecture(name).build((64, 64, 1), 2, True)
    keras.utils.set_random_seed(0)
    rgb = get_architecture(name).build((64, 64, 3), 2, True)
    image = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 1)).astype(np.float32)
    np.testing.assert_allclose(grey.predict(image, verbose=0), rgb.predict(np.repeat(image, 3, axis=-1), verbose=0),
                               rtol=0, atol=1e-6)


@needs_weights
def test_the_frozen_cut_point_exists_in_each_transfer_model():
    for arch in ARCHITECTURES.values():
        if arch.frozen_until:
            assert arch.build((96, 96, 3), 2, True).get_layer(arch.frozen_until) is not None


def test_missing_weights_name_the_file_and_keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as caught:
        get_architecture("mobilenet_v2").build((96, 96, 3), 2, True)
    message = str(caught.value)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5" in message
    assert "KERAS_HOME" in message and str(tmp_path) in message


def test_unknown_architecture_lists_the_choices():
    with pytest.raises(ValueError, match="mobilenet_v2"):
        get_architecture("resnet9000")
