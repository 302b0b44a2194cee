"""Export: every file keeps the contract (uint8 in, probabilities out, card inside) and is verified against Keras
before it is published."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from medclf.export import pipeline, verification_images
from medclf.export.labelled_images import spread
from medclf.export.verify import TOLERANCES, Calls, Tolerance, VerificationError, compare, expected_flips
from medclf.rundir import RunDir
from medclf.runtime import Classifier, load_image
from medclf.runtime.decision import Decision
from medclf.train.pipeline import predict


def published(exported) -> dict[str, dict]:
    return {name: entry for name, entry in exported[1]["precisions"].items() if entry["passed"]}


def test_the_graph_takes_uint8_pixels_with_a_dynamic_batch_in_every_precision(exported):
    assert "fp32" in published(exported)
    for entry in published(exported).values():
        model = onnx.load(entry["file"])
        (image,), (probabilities, unfamiliarity) = model.graph.input, model.graph.output
        assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
        dims = image.type.tensor_type.shape.dim
        assert not dims[0].HasField("dim_value") and [d.dim_value for d in dims[1:]] == [64, 64, 3]
        assert probabilities.name == "probabilities"
        assert probabilities.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert unfamiliarity.name == "unfamiliarity"  # by default, in every precision (export/familiarity.py)
        assert unfamiliarity.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert unfamiliarity.type.tensor_type.shape.dim[1].dim_value == 1


def test_every_file_carries_labels_preprocessing_provenance_and_its_precision(exported, run_dir):
    for precision, entry in published(exported).items():
        card = Classifier(entry["file"]).card
        assert list(card.labels) == json.loads((run_dir / "labels.json").read_text())
        assert (card.preprocess.height, card.preprocess.width, card.preprocess.color) == (64, 64, "rgb")
        assert card.precision == precision and len(card.source["keras_sha256"]) == 64
        assert card.metrics["validation"]["images"] > 0


def test_a_file_names_its_run_while_the_run_still_holds_the_model_exported(exported, run_dir, tmp_path):
    """So ``medclf evaluate FILE.onnx`` can tell which images the model trained and validated on."""
    source = Classifier(published(exported)["fp32"]["file"]).card.source
    assert RunDir.of_export(source).path == run_dir.resolve()
    (tmp_path / "run").mkdir()
    for name in ("labels.json", "preprocess.json", "model.keras"):
        (tmp_path / "run" / name).write_bytes((run_dir / name).read_bytes())
    # a copy holding the model
    assert RunDir.of_export(source | {"run_dir": str(tmp_path / "run")}).path == tmp_path / "run"
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "model.keras").write_bytes((run_dir / "model.keras").read_bytes())
    assert RunDir.of_export(source | {"run_dir": str(tmp_path / "bare")}) is None  # the model without its run
    (tmp_path / "run" / "model.keras").write_bytes(b"trained again")
    assert RunDir.of_export(source | {"run_dir": str(tmp_path / "run")}) is None  # another model now
    assert RunDir.of_export({k: v for k, v in source.items() if k != "run_dir"}) is None  # exported before


def test_the_report_says_what_each_file_was_verified_on_and_how_fast_it_runs(exported):
    out, report, _ = exported
    assert json.loads((out / "export_report.json").read_text()) == report
    assert report["images"] == 96 and "48 held-out validation, 48 training images" in report["verified_on"]
    assert list(report["precisions"]) == ["fp32", "fp16", "int8"]
    fp32 = report["precisions"]["fp32"]
    assert fp32["passed"] and fp32["agreement"] == 1.0 and fp32["max_abs_diff"] <= 1e-4
    for entry in report["precisions"].values():
        assert entry["size_bytes"] > 0 and 0 <= entry["accuracy"] <= 1 and entry["reference_accuracy"] is not None
        assert (out / entry["file"]).exists() == entry["passed"]
        assert entry["latency_ms_batch1"] > 0 and entry["images_per_s_batch32"] > 0  # measured either way
    assert report["passed"] == all(entry["passed"] for entry in report["precisions"].values())


def test_a_small_held_out_split_is_topped_up_with_test_then_training_images_int8_is_not_calibrated_on(
        blood_cells, tmp_path):
    """On a few dozen images a tolerance cannot be judged: verification takes 256, and says what they are."""
    classes = ["EOSINOPHIL", "LYMPHOCYTE"]
    files = {name: sorted(str(p) for p in (blood_cells / "TRAIN" / name).iterdir())[:300] for name in classes}

    def split(start: int, stop: int) -> dict:
        return {"paths": files[classes[0]][start:stop] + files[classes[1]][start:stop],
                "labels": [0] * (stop - start) + [1] * (stop - start)}

    splits = {"train": split(30, 300), "val": split(0, 10), "test": split(10, 30)}
    (tmp_path / "labels.json").write_text(json.dumps(classes))
    (tmp_path / "splits.json").write_text(json.dumps(splits))
    paths, names, said = verification_images.verification_images(tmp_path, None, None)
    assert len(paths) == 256 and said.startswith("20 held-out validation, 40 test, 196 training images")
    assert paths[:60] == splits["val"]["paths"] + splits["test"]["paths"]
    assert names == [Path(path).parent.name for path in paths]
    training = splits["train"]["paths"]
    calibrated = {training[i] for i in spread(len(training), verification_images.CALIBRATION_IMAGES)}
    assert not calibrated & set(paths[60:]) and set(names[60:]) == set(classes)
    splits["train"] = split(30, 80)  # 100 training images: INT8 calibrates on every one, verification takes them
    (tmp_path / "splits.json").write_text(json.dumps(splits))
    paths, _, said = verification_images.verification_images(tmp_path, None, None)
    assert len(paths) == 160 and said.startswith("20 held-out validation, 40 test, 100 training images of ")
    assert said.endswith("; 100 of the training images are INT8's calibration images (too few others)")

    asked = verification_images.verification_images(tmp_path, None, None, most=16)[0]
    assert asked == splits["val"]["paths"]  # as asked
    splits["val"] = split(0, 130)  # enough held out: nothing else
    (tmp_path / "splits.json").write_text(json.dumps(splits))
    paths, _, said = verification_images.verification_images(tmp_path, None, None)
    assert paths == splits["val"]["paths"] and said.startswith("held-out validation split")


def test_onnxslim_simplifies_the_graph_only_where_outputs_stay_identical(exported):
    simplified = exported[1]["simplified"]
    assert simplified["kept"] and simplified["max_abs_change"] <= 1e-6
    assert simplified["nodes_after"] < simplified["nodes_before"]
    assert len(onnx.load(exported[1]["precisions"]["fp32"]["file"]).graph.node) == simplified["nodes_after"]


def test_onnx_matches_keras_on_unseen_test_images(exported, run_dir, blood_cell_images):
    import keras

    classifier = Classifier(exported[0] / "model.onnx")
    images = np.stack([load_image(p, classifier.card.preprocess) for p in blood_cell_images])
    keras_p = predict(keras.models.load_model(run_dir / "model.keras"), images)
    comparison = compare(keras_p, classifier.predict(images), Tolerance(1.0, 1e-4))
    assert comparison.passed, comparison.failures


def test_a_file_that_fails_verification_is_not_published_and_the_others_are(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(TOLERANCES, "fp16", Tolerance(min_agreement=1.0, max_abs_diff=-1.0))
    with pytest.raises(VerificationError, match=r"model.fp16.onnx not written: .*max \|Δp\|"):
        pipeline.export_run(run_dir / "model.keras", tmp_path, ("fp16",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export_report.json", "model.onnx"]
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert report["passed"] is False and report["precisions"]["fp32"]["passed"]


def test_when_fp32_fails_nothing_derived_from_it_is_attempted(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(TOLERANCES, "fp32", Tolerance(min_agreement=1.0, max_abs_diff=-1.0))
    report = pipeline.export_run(run_dir / "model.keras", tmp_path, ("fp32", "int8"), strict=False)
    assert list(report["precisions"]) == ["fp32"] and not report["passed"]
    assert [p.name for p in tmp_path.iterdir()] == ["export_report.json"]


def test_an_unknown_precision_is_refused_before_any_work(run_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown precision bf16"):
        pipeline.export_run(run_dir / "model.keras", tmp_path, ("bf16",))
    assert not tmp_path.joinpath("model.onnx").exists()


def test_compare_flags_disagreement_and_nan():
    reference = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    flipped = compare(reference, reference[:, ::-1], Tolerance(1.0, 1e-4))
    assert flipped.agreement == 0.0 and len(flipped.failures) == 2
    assert compare(reference, np.full_like(reference, np.nan), Tolerance(0.0, 1.0)).failures == [
        "outputs contain NaN or infinity"]


def test_a_failed_agreement_says_how_many_calls_changed_and_when_the_images_are_too_few_to_allow_any():
    reference = np.tile(np.array([[0.9, 0.1]], np.float32), (500, 1))
    one_changed = reference.copy()
    one_changed[0] = [0.1, 0.9]
    assert compare(reference, one_changed, Tolerance(0.999)).failures == [
        "agreement 99.80% with Keras' calls < 99.90% (1 of 500 changed; 99.90% allows none under 1,000 images: "
        "--verify-data can give it that many held-back images)"]
    many = np.tile(reference, (4, 1))  # 2,000 images: two changes are allowed, three are not
    three_changed = many.copy()
    three_changed[:3] = [0.1, 0.9]
    assert compare(many, three_changed, Tolerance(0.999)).failures == [
        "agreement 99.85% with Keras' calls < 99.90% (3 of 2,000 changed)"]
    assert Tolerance(0.999).most_changes(999) == 0 and Tolerance(0.999).most_changes(1000) == 1
    assert Tolerance(0.99).most_changes(489) == 4 and Tolerance(1.0).most_changes(10_000) == 0


def test_compare_bounds_the_accuracy_drop_when_labels_are_known():
    reference = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]], np.float32)
    labels = np.array([0, 1, 0, 0])
    worse = reference.copy()
    worse[2] = [0.4, 0.6]  # one right answer turns wrong: accuracy 100% → 75%
    tolerance = Tolerance(min_agreement=0.5, max_accuracy_drop=0.005)
    assert compare(reference, worse, tolerance, labels).failures == [
        "accuracy 75.00% is more than 0.5% below Keras' 100.00%"]
    assert compare(reference, worse, tolerance).failures == [
        "accuracy drop not measurable: the verification images have no labels"]
    assert compare(reference, reference, tolerance, labels).passed
    # exactly the half point allowed, on 200 images (0.5 - 0.495 is 0.0050000000000000044 in floating point)
    half, truth = np.tile([[0.6, 0.4]], (200, 1)), np.r_[np.zeros(100, int), np.ones(100, int)]
    one_turned = half.copy()
    one_turned[0] = [0.4, 0.6]
    assert compare(half, one_turned, Tolerance(min_agreement=0.99, max_accuracy_drop=0.005), truth).passed


def test_a_binary_model_is_verified_on_the_calls_its_threshold_makes_not_on_argmax():
    labels = ("NORMAL", "PNEUMONIA")
    calls = Calls(labels, Decision("PNEUMONIA", 0.62))
    keras_p = np.array([[0.30, 0.70], [0.42, 0.58], [0.10, 0.90], [0.60, 0.40]])
    exported = np.array([[0.36, 0.64], [0.36, 0.64], [0.10, 0.90], [0.60, 0.40]])  # argmax never moves
    truth = np.array([1, 0, 1, 0])
    assert compare(keras_p, exported, Tolerance(1.0), truth).agreement == 1.0
    served = compare(keras_p, exported, Tolerance(1.0), truth, calls)
    assert served.agreement == 0.75 and (served.reference_accuracy, served.accuracy) == (1.0, 0.75)
    assert calls.describe() == "PNEUMONIA when its probability is at least 0.62"
    # a call is as close to changing as its probability is to the threshold, not to one half: moves of 0.06
    # beat no argmax gap (the smallest is 0.16) but do beat the 0.04 between 0.58 and the threshold
    assert calls.scores(keras_p).argmax(1).tolist() == calls(keras_p).tolist() == [1, 0, 1, 0]
    assert expected_flips(keras_p, keras_p, exported) == 0.0
    assert expected_flips(keras_p, keras_p, exported, calls) == pytest.approx(2 / 16)


def test_a_binary_models_threshold_travels_into_the_onnx_file_and_the_runtime_calls_by_it(binary_export, cataract):
    run, out, report, _ = binary_export
    classifier = Classifier(out / "model.onnx")
    decision = RunDir(run).decision
    assert report["calls"] == f"cataract when its probability is at least {decision.threshold:.4g}"
    assert classifier.card.decision == decision and decision.rule == "sensitivity>=1"
    paths = [str(p) for p in sorted((cataract / "cataract").iterdir())[:6]]
    calls = [p.label for p in classifier.classify(paths)]
    images = np.stack([load_image(p, classifier.card.preprocess) for p in paths])
    p_cataract = classifier.predict(images)[:, classifier.labels.index("cataract")]
    assert calls == ["cataract" if p >= decision.threshold else "normal" for p in p_cataract]


def test_an_exported_file_chooses_a_new_threshold_on_its_runs_validation_images(binary_export, cataract, tmp_path):
    """The file names its run (``medclf.source.run_dir``): ``medclf evaluate FILE.onnx --target-sensitivity``
    works as on the Keras model, and counts the run's own images among DATA as seen."""
    from medclf.train.pipeline import evaluate_run

    run, out, _, _ = binary_export
    scored = evaluate_run(out / "model.onnx", cataract, target_sensitivity=1.0)
    assert abs(scored["threshold"] - RunDir(run).decision.threshold) < 1e-3  # the rule training chose it by
    assert scored["identical_to_training"] == 59  # every photo trained or validated the model


def test_a_resize_inside_the_model_comes_out_at_its_size_by_onnx_rule_not_only_in_onnxruntime(blood_cell_images):
    """An ensemble member sees a 352-px image resized to 224 inside the graph; tf2onnx writes that as a scale of
    224/352, which in float32 gives floor(352 × scale) = 223 by ONNX's rule. The exported scale must give 224 by
    the rule too (no shape warnings, the same size in any runtime), with Keras' answers unchanged."""
    import keras
    import onnxruntime as ort

    from medclf.export.onnx_export import convert
    from medclf.runtime import Preprocess
    from medclf.runtime.modelcard import ModelCard

    keras.utils.set_random_seed(0)
    image = keras.Input((88, 88, 3))  # 56/88 = 224/352
    x = keras.layers.Conv2D(4, 3)(keras.layers.Rescaling(1 / 255)(keras.layers.Resizing(56, 56)(image)))
    model = keras.Model(image, keras.layers.Dense(2, activation="softmax", name="probabilities")(
        keras.layers.GlobalAveragePooling2D(name="pool")(x)))
    card = ModelCard(labels=("a", "b"), preprocess=Preprocess(88, 88))
    proto = onnx.shape_inference.infer_shapes(convert(model, card))
    resized = {node.output[0] for node in proto.graph.node if node.op_type == "Resize"}
    shapes = [[d.dim_value for d in v.type.tensor_type.shape.dim] for v in proto.graph.value_info if v.name in resized]
    assert len(resized) == 1 and [shape[1:] for shape in shapes] == [[3, 56, 56]]
    images = np.stack([load_image(path, card.preprocess) for path in blood_cell_images[:4]])
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"image": images})[0],
                               model.predict(images.astype(np.float32), verbose=0), atol=1e-5)


def test_a_labels_file_that_is_not_the_models_is_refused_in_one_line(run_dir, tmp_path):
    """labels.json copied from another run: too few labels ended in an IndexError, too many were exported as
    verified, with a class the model never answers."""
    import shutil

    from medclf.export.pipeline import export_run

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "labels.json").write_text(json.dumps(["a", "b", "c", "d", "e"]))
    with pytest.raises(ValueError, match=r"labels.json names 5 classes and the model answers 4: it is not this "):
        export_run(copy / "model.keras", tmp_path / "out", ("fp32",))


def test_the_work_folder_of_an_export_killed_outright_is_removed_by_the_next_and_a_running_ones_is_not(tmp_path):
    """SIGKILL (the OOM killer) runs no ``finally``: 17 MB hidden in --out, for good."""
    import fcntl
    import os
    import time

    from medclf.export.pipeline import _work_folder

    abandoned, running = tmp_path / ".export-dead", tmp_path / ".export-alive"
    for folder in (abandoned, running):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"x" * 100)
        os.utime(folder, (time.time() - 7200, time.time() - 7200))  # two hours untouched
    held = os.open(running, os.O_RDONLY)  # as the export working in it holds it
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with _work_folder(tmp_path) as work:
            assert work.is_dir() and work.name.startswith(".export-")
            assert not abandoned.exists() and (running / "model.onnx").is_file()
        assert not work.exists()
    finally:
        os.close(held)


def test_a_binary_run_without_its_threshold_file_is_not_exported_to_call_at_one_half(binary_export, tmp_path):
    """decision.json lost (a run folder copied without it): the file was exported calling at 0.5, silently."""
    import shutil

    from medclf.export.pipeline import export_run

    copy = tmp_path / "run"
    shutil.copytree(binary_export[0], copy)
    (copy / "decision.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"decision.json: missing, and the run chose its threshold \(.*\) on "
                                                r"validation images: without it the exported file would call at 0.5"):
        export_run(copy / "model.keras", tmp_path / "out", ("fp32",))


def test_recorded_images_that_are_gone_are_left_out_in_one_line_and_not_counted(blood_cell_images, tmp_path,
                                                                                 capsys):
    """A line per missing file was printed, and the report said it verified on images that were not there."""
    import shutil

    from medclf.export.verification_images import verification_images

    copies = []
    for image in blood_cell_images[:8]:
        copies.append(str(shutil.copy(image, tmp_path / f"{len(copies)}-{image.name}")))
    (tmp_path / "labels.json").write_text(json.dumps(["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]))
    (tmp_path / "splits.json").write_text(json.dumps({"val": {"paths": copies, "labels": [0] * 8}}))
    for gone in copies[:3]:
        Path(gone).unlink()
    paths, _, said = verification_images(tmp_path, None, None, calibrating=False)
    assert paths == copies[3:] and said.startswith("5 held-out validation images")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "3 of the 8 val images" in err
