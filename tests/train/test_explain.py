"""Grad-CAM points at the evidence: a known-answer model, and every registry architecture."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from medclf.runtime.decision import Decision
from medclf.train.architectures import ARCHITECTURES, get_architecture
from medclf.train.ensemble import averaged
from medclf.train.explain import GradCam, explained_layers, last_conv_layer


def brightness_model(size: int = 32, scale: float = 0.05) -> keras.Model:
    """p(bright) grows with the mean of a 1x1 'conv' copy of the image: the evidence is where pixels are bright."""
    inputs = keras.Input((size, size, 1), name="image")
    x = layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones", name="conv")(inputs)
    x = layers.GlobalAveragePooling2D(name="pooled")(x)
    outputs = layers.Dense(2, activation="softmax", kernel_initializer=keras.initializers.Constant([[-scale, scale]]),
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


def test_a_call_made_with_certainty_still_shows_its_evidence():
    """The gradient of a probability that rounds to 1 in float32 is zero: a confident model's heatmap was blank."""
    image = np.zeros((1, 32, 32, 1), np.uint8)
    image[0, 2:10, 20:30] = 255
    heatmaps, probabilities = GradCam(brightness_model(scale=50.0))(image, [1])
    assert probabilities[0, 1] == 1.0
    peak = np.unravel_index(heatmaps[0].argmax(), (32, 32))
    assert heatmaps[0].max() > 0 and 2 <= peak[0] < 10 and 20 <= peak[1] < 30


def test_a_binary_call_made_below_one_half_shows_the_evidence_for_it_not_a_blank_map():
    """A screening threshold of 0.9 calls "dark" at p(bright) = 0.7: dark's own score counts only against it
    (negative where bright, nothing elsewhere), and its heatmap was blank. The call compares the classes' scores
    with the threshold; explained as that, the evidence for "dark" is where the image is dark."""
    image = np.zeros((1, 32, 32, 1), np.uint8)
    image[0, 2:10, 20:30] = 255  # 80 of 1,024 pixels bright
    model = brightness_model(scale=0.05)
    p_bright = GradCam(model)(image, [1])[1][0, 1]
    assert 0.5 < p_bright < 0.9
    assert GradCam(model)(image, [0])[0].max() == 0.0  # the class's own score: blank
    labels, decision = ("dark", "bright"), Decision(positive_class="bright", threshold=0.9)
    heat, _ = GradCam(model, labels=labels, decision=decision)(image, [0])
    assert heat[0].max() == 1.0 and heat[0, 2:10, 20:30].max() < heat[0, 20:, :10].min()  # dark parts, not the patch
    towards, _ = GradCam(model, labels=labels, decision=Decision(positive_class="bright", threshold=0.2))(image, [1])
    peak = np.unravel_index(towards[0].argmax(), (32, 32))
    assert 2 <= peak[0] < 10 and 20 <= peak[1] < 30  # a positive call at 0.2: the bright patch, as before


def test_a_layer_without_a_spatial_map_is_refused_in_one_line():
    model = brightness_model()
    with pytest.raises(ValueError, match=r"layer pooled has no spatial feature map to explain \(its output is "
                                         r"\[None, 1\]\)"):
        GradCam(keras.Model(model.input, model.output), "pooled")


@pytest.mark.parametrize("offsets, threshold", [((-5.0, -2.0), 0.2), ((0.0, 0.0, -7.0), 0.5)])
def test_an_ensembles_binary_call_is_explained_from_the_probability_it_averages(offsets, threshold):
    """Its members' margins summed below 0 for a call the average makes (one member far off): the map came out
    blank. Centred on the ensemble's own margin, a flat image's evidence is everywhere."""
    from medclf.runtime.decision import decide
    from medclf.train.ensemble import averaged

    def member(offset: float) -> keras.Model:
        model = brightness_model()
        model.layers[-1].bias.assign(np.array([0.0, offset], np.float32))
        return model

    image = np.full((1, 32, 32, 1), 20, np.uint8)
    labels, decision = ("dark", "bright"), Decision(positive_class="bright", threshold=threshold)
    ensemble = averaged([member(offset) for offset in offsets], (32, 32, 1))

    def call(probabilities):
        return decide(probabilities, labels, decision)

    heat, probabilities = GradCam(ensemble, labels=labels, decision=decision)(image, None, call)
    assert labels[call(probabilities)[0]] == "bright" and heat.min() == 1.0


def test_a_threshold_of_a_few_billionths_still_places_the_call_on_its_side():
    """Thresholds below 1e-7 were clipped there: a positive call at p = 2e-9 read a margin of -3.9, blank."""
    from medclf.runtime.cam import binary_margin

    labels, decision = ("NORMAL", "PNEUMONIA"), Decision(positive_class="PNEUMONIA", threshold=1.5e-9)
    scores = np.log(np.array([[1 - 2e-9, 2e-9], [1 - 1e-9, 1e-9]]))
    assert binary_margin(scores, labels, decision)[0] > 0 > binary_margin(scores, labels, decision)[1]


def test_an_exported_file_is_pointed_to_the_heatmaps_it_draws_itself(tmp_path):
    from medclf.train.explain import explain_files

    exported = tmp_path / "exported" / "model.onnx"
    exported.parent.mkdir()
    exported.write_bytes(b"onnx")
    with pytest.raises(ValueError, match=r"model.onnx: an exported file; medclf explain takes RUN_DIR/model.keras "
                                         r"\(.*medclf export --cam, then medclf-run --cam DIR\)"):
        explain_files(exported, ["x.jpg"], tmp_path / "heat")


@pytest.mark.parametrize("second", [32, 16])
def test_an_ensemble_is_explained_at_each_members_feature_map_together(second):
    """Two members of one architecture, the second seeing the image at its own size (as ``medclf ensemble``
    nests them): the heatmap lights up where the evidence is, for the ensemble's own averaged probability."""
    image = np.zeros((1, 32, 32, 1), np.uint8)
    image[0, 2:10, 20:30] = 255
    pair = averaged([brightness_model(32), brightness_model(second)], (32, 32, 1))
    heatmaps, probabilities = GradCam(pair)(image, [1])
    np.testing.assert_allclose(probabilities, pair.predict(image.astype(np.float32), verbose=0), atol=1e-6)
    peak = np.unravel_index(heatmaps[0].argmax(), (32, 32))
    assert 2 <= peak[0] < 10 and 20 <= peak[1] < 30 and heatmaps[0, 20:, :10].max() == 0.0
    with pytest.raises(ValueError, match="each one's last feature map"):
        GradCam(pair, "conv")


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_registry_architecture_can_be_explained(name):
    model = get_architecture(name).build((64, 64, 3), 3, False)
    layer = last_conv_layer(model)
    assert len(model.get_layer(layer).output.shape) == 4
    rng = np.random.default_rng(0)
    heatmaps, probabilities = GradCam(model)(rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    assert heatmaps.shape == (2, 64, 64) and np.isfinite(heatmaps).all()
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0 and probabilities.shape == (2, 3)


def test_the_last_map_is_taken_before_its_pooling_and_a_map_of_one_location_is_refused():
    """small_cnn's last layer with a map is a max pooling: 1x1 at 28 px (a one-colour overlay), where the map it
    pools, relu3, is 3x3; a map of one location, asked for, would say nothing."""
    assert last_conv_layer(get_architecture("small_cnn").build((28, 28, 1), 2, False)) == "relu3"
    with pytest.raises(ValueError, match="pool3's feature map is 1x1 at this input size: its heatmap would be one"):
        GradCam(get_architecture("small_cnn").build((16, 16, 1), 2, False), "pool3")


def test_a_model_reading_two_branches_is_explained_at_both():
    """The chest preset's two_backbones: its head reads MobileNetV2's 1,280 pooled features and MobileNet 0.25's
    256; explained at the last feature map alone, the heatmap was the small branch's."""
    model = get_architecture("two_backbones").build((64, 64, 3), 2, False)
    assert explained_layers(model) == ["out_relu", "conv_pw_13_relu"]
    assert GradCam(model).layer == "out_relu, conv_pw_13_relu"
    assert explained_layers(get_architecture("mobilenet_v2").build((64, 64, 3), 2, False)) == ["out_relu"]



def test_a_tutorial_model_with_a_backbone_used_as_a_layer_is_explained_at_the_backbones_last_map(cataract, tmp_path):
    """``Sequential([Rescaling, base, GlobalAveragePooling2D(), Dense])``, the transfer-learning tutorials' form:
    the backbone's ``.output`` is its own graph's, which the outer input does not reach — "Output with path 0 is
    not connected to inputs"."""
    import json

    import cv2

    from medclf.train.explain import explain_files

    keras.utils.set_random_seed(0)
    base_input = keras.Input((32, 32, 3))
    base = keras.Model(base_input, keras.layers.Conv2D(8, 3, activation="relu")(
        keras.layers.Conv2D(4, 3, activation="relu")(base_input)), name="backbone")
    keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255), base,
                      keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax")]).save(
        tmp_path / "model.keras")
    (tmp_path / "labels.json").write_text(json.dumps(sorted(p.name for p in cataract.iterdir() if p.is_dir())))
    (tmp_path / "preprocess.json").write_text(json.dumps({"height": 32, "width": 32}))
    image = sorted((cataract / "normal").iterdir())[0]
    [explained] = explain_files(tmp_path / "model.keras", [str(image)], tmp_path / "cams")
    assert explained.error is None and cv2.imread(str(explained.heatmap)).std() > 1
