"""``medclf export --cam``: a second output of class activation maps, so the runtime draws heatmaps without
TensorFlow — and they are exactly the model's own evidence: their spatial mean is its logits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest

from medclf.export import pipeline
from medclf.export.onnx_export import convert
from medclf.runtime import Classifier, ModelCardError, load_image
from medclf.runtime.cam import heatmaps


@pytest.fixture(scope="module")
def cam_model(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cam")
    pipeline.export_run(run_dir / "model.keras", out, cam=True, max_images=16)
    return out / "model.onnx"


def test_the_file_has_a_cam_output_described_in_its_card(cam_model):
    model = onnx.load(str(cam_model))
    assert [o.name for o in model.graph.output] == ["probabilities", "cam"]
    assert "class activation maps" in Classifier(cam_model).card.outputs["cam"]


def test_the_maps_spatial_mean_is_the_models_logits(cam_model, blood_cell_images):
    classifier = Classifier(cam_model)
    images = np.stack([load_image(p, classifier.card.preprocess) for p in blood_cell_images])
    probabilities, maps = classifier.cam(images)
    assert maps.shape[0] == len(images) and maps.shape[-1] == len(classifier.labels) and maps.shape[1] > 1
    logits = maps.mean(axis=(1, 2))
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(1, keepdims=True), probabilities, atol=1e-5)
    np.testing.assert_allclose(classifier.predict(images), probabilities, atol=1e-6)
    called = probabilities.argmax(1)
    heat = heatmaps(maps[np.arange(len(images)), :, :, called], *images.shape[1:3])
    assert heat.shape == images.shape[:3] and heat.max() == 1.0


def test_a_binary_models_heatmaps_explain_its_calls_at_its_threshold_as_grad_cam_does(binary_export, cataract,
                                                                                     tmp_path):
    """A threshold chosen for sensitivity 1 lies far from 0.5, so many calls are made below p = 0.5; each map is
    the call's margin over the threshold per location (its mean is the call's own margin, never below 0: no
    blank heatmap), and the runtime draws what Keras' Grad-CAM draws."""
    from medclf.runtime.cam import called_maps
    from medclf.runtime.decision import decide
    from medclf.train.explain import GradCam

    run = binary_export[0]
    pipeline.export_run(run / "model.keras", tmp_path, ("fp32",), cam=True, max_images=16)
    classifier = Classifier(tmp_path / "model.onnx")
    labels, decision = classifier.labels, classifier.card.decision
    images = np.stack([load_image(p, classifier.card.preprocess) for p in sorted(cataract.rglob("*.jp*g"))[:24]])
    probabilities, maps = classifier.cam(images)
    called = decide(probabilities, labels, decision)
    positive = labels.index(decision.positive_class)
    assert np.any(probabilities[np.arange(len(images)), called] < 0.5)  # calls made below one half are among them
    evidence = called_maps(maps, called, labels, decision)
    p = np.clip(probabilities[:, positive], 1e-7, 1 - 1e-7)
    margin = np.log(p / (1 - p)) - np.log(decision.threshold / (1 - decision.threshold))
    np.testing.assert_allclose(evidence.mean(axis=(1, 2)), np.where(called == positive, margin, -margin), atol=1e-3)
    drawn = heatmaps(evidence, *images.shape[1:3])
    assert all(heat.max() == 1.0 for heat in drawn)
    grad_cam, _ = GradCam(keras.models.load_model(run / "model.keras", compile=False), labels=labels,
                          decision=decision)(images, called)
    for ours, theirs in zip(drawn, grad_cam):
        assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.99

    # A site's calibrated copy (medclf calibrate: temperature, class bias, its own threshold) scales its maps as it
    # scales its probabilities: their spatial mean stays its calls' logits, every call's margin at least 0.
    import dataclasses

    from medclf.train.calibrate import with_scaling

    site = dataclasses.replace(decision, threshold=0.3)
    scaled = with_scaling(onnx.load(str(tmp_path / "model.onnx")), 3.75, np.array([0.0, -0.69]))
    onnx.helper.set_model_props(scaled, {**{p.key: p.value for p in scaled.metadata_props},
                                         **dataclasses.replace(classifier.card, decision=site).to_metadata()})
    onnx.save(scaled, str(tmp_path / "model.site.onnx"))
    copy = Classifier(tmp_path / "model.site.onnx")
    probabilities, maps = copy.cam(images)
    logits = maps.mean(axis=(1, 2))
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(1, keepdims=True), probabilities, atol=1e-4)
    called = decide(probabilities, labels, site)
    assert (called_maps(maps, called, labels, site).mean(axis=(1, 2)) >= -1e-4).all()


def test_piped_images_heatmaps_are_named_by_their_pixels_not_by_the_dash_they_all_share(cam_model,
                                                                                      blood_cell_images, tmp_path):
    """Every piped image is "-": each study's heatmap replaced the last one's, and a kept answer pointed at
    another patient's picture."""
    import json
    import subprocess
    import sys

    named = []
    for image in blood_cell_images[:2] + blood_cell_images[:1]:
        done = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", "-", "--model", str(cam_model), "--json",
                               "--cam", str(tmp_path / "heat")], input=image.read_bytes(), capture_output=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        named.append(json.loads(done.stdout)["heatmap"])
    assert named[0] != named[1] and named[0] == named[2]  # the same picture again: its own heatmap again
    assert len(list((tmp_path / "heat").iterdir())) == 2


def test_a_model_exported_without_maps_says_so(exported, blood_cell_images):
    classifier = Classifier(exported[1]["precisions"]["fp32"]["file"])
    with pytest.raises(ModelCardError, match="--cam"):
        classifier.cam(np.zeros((1, *classifier.card.preprocess.shape), np.uint8))


def test_a_head_that_is_not_pool_then_dense_is_refused(cam_model):
    card = Classifier(cam_model).card
    inputs = keras.Input((64, 64, 3))
    flat = keras.layers.Flatten()(keras.layers.Conv2D(2, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax", name="probabilities")(flat))
    with pytest.raises(ValueError, match="a CAM output needs one"):
        convert(model, card, cam=True)


def test_a_feature_map_of_one_location_is_refused_not_drawn_as_a_wash(cam_model):
    """small_cnn at 16 px pools to 1x1: every heatmap written was one colour, and nothing said so."""
    from medclf.train.architectures import get_architecture

    card = Classifier(cam_model).card
    with pytest.raises(ValueError, match=r"--cam: model small_cnn's last feature map is 1x1 at its input size "
                                         r"\(16x16\)"):
        convert(get_architecture("small_cnn").build((16, 16, 3), 4, False), card, cam=True)


def test_triton_config_lists_the_cam_output_too(cam_model, tmp_path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient not installed")
    from google.protobuf import text_format

    from medclf.export.triton import write_model

    folder = write_model(tmp_path, "cells", cam_model, cam_model)
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    dims = [d.dim_value for d in onnx.load(str(cam_model)).graph.output[1].type.tensor_type.shape.dim[1:]]
    assert [(o.name, list(o.dims)) for o in config.output][1] == ("cam", dims)
    assert config.output[1].label_filename == ""


def test_medclf_run_draws_a_heatmap_per_image_without_tensorflow(cam_model, tmp_path, blood_cell_images):
    import json
    import subprocess
    import sys

    code = ("import sys\nfrom medclf.runtime.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('modules:', 'tensorflow' in sys.modules, file=sys.stderr)\n    raise")
    done = subprocess.run([sys.executable, "-c", code, "--model", str(cam_model), "--json", "--cam",
                           str(tmp_path / "heat"), *map(str, blood_cell_images[:3])],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "modules: False" in done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    for line in lines:
        assert line["heatmap"].endswith(f".{line['label']}.cam.png") and Path(line["heatmap"]).stat().st_size > 1000
    assert len({line["heatmap"] for line in lines}) == 3


def test_a_heatmap_the_disk_refuses_is_one_line_and_the_run_goes_on(cam_model, tmp_path, blood_cell_images):
    from medclf.runtime.cam import overlay_name
    from medclf.runtime.cli import main

    heat = tmp_path / "heat"
    blocked = str(blood_cell_images[1])
    for label in Classifier(cam_model).labels:  # a folder where its overlay would go, whatever it is called
        (heat / overlay_name(blocked, label, "cam")).mkdir(parents=True)
    csv_file = tmp_path / "results.csv"
    with pytest.raises(SystemExit) as done:
        main(["--model", str(cam_model), "--cam", str(heat), "--csv", str(csv_file),
              *map(str, blood_cell_images[:3])])
    assert done.value.code == 1  # something failed
    rows = csv_file.read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == list(map(str, blood_cell_images[:3]))
    assert all(row.split(",")[1] for row in rows)  # all three classified
    assert "heatmap" in rows[1] and "not written (Is a directory)" in rows[1]
    assert Path(rows[0].split(",")[5]).is_file() and Path(rows[2].split(",")[5]).is_file()  # the heatmap column


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                    reason="TensorRT is not installed (NVIDIA GPU machines only: medclf[gpu])")
def test_a_tensorrt_engine_serves_the_maps_too(cam_model, blood_cell_images, tmp_path):
    """TensorRT runs only when every output has a device address: an engine built from a --cam file must
    give both, the same as onnxruntime."""
    from medclf.runtime.tensorrt_engine import BatchProfile, EngineCache, TensorRTEngine

    classifier = Classifier(cam_model)
    images = np.stack([load_image(p, classifier.card.preprocess) for p in blood_cell_images])
    engine = TensorRTEngine(EngineCache(tmp_path).engine_for(cam_model, "fp32", BatchProfile(1, 4, 8)))
    for served, expected in zip(engine.run(["probabilities", "cam"], images), classifier.cam(images)):
        np.testing.assert_allclose(served, expected, atol=1e-3)
