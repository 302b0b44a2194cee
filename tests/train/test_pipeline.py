"""Training end to end without a frozen part (small CNN, augmented tf.data batches) on a real binary task:
the run directory, the threshold chosen on validation data, the pictures, and Grad-CAM on the result."""

from __future__ import annotations

import json

import cv2
import keras
import numpy as np
import pytest

from medclf.rundir import RunDir
from medclf.runtime.cam import overlay_name
from medclf.runtime.decision import decide
from medclf.train.copies import copy_groups
from medclf.train.data import DatasetError, load_arrays, read_folder
from medclf.train.explain import explain_files, last_conv_layer
from medclf.train.fit import FitConfig, predict
from medclf.train import pipeline
from medclf.train.pipeline import Recipe, evaluate_run, train


def test_small_cnn_trains_on_cataract_photos_and_reports_binary_metrics(cataract, tmp_path, monkeypatch):
    result = train(cataract, tmp_path, Recipe(arch="small_cnn", image_size=(48, 64), val_split=0.3,
                                              fit=FitConfig(epochs=2)))
    validation = result.metrics["validation"]
    assert validation["positive_class"] == "cataract"
    assert {"sensitivity", "specificity", "roc_auc_macro"} <= set(validation)
    assert json.loads((tmp_path / "preprocess.json").read_text())["width"] == 64
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 3  # header + 2 epochs
    val_dir = tmp_path / "val"
    for path, label in zip(*json.loads((tmp_path / "splits.json").read_text())["val"].values()):
        target = val_dir / ("cataract", "normal")[label]
        target.mkdir(parents=True, exist_ok=True)
        (target / path.split("/")[-1]).symlink_to(path)
    decision = RunDir(tmp_path).decision
    assert decision.positive_class == "cataract" and validation["threshold"] == decision.threshold
    scored = evaluate_run(tmp_path / "model.keras", val_dir)
    assert scored["accuracy"] == validation["accuracy"]
    assert scored["identical_to_training"] == validation["images"]  # its own validation images: not unseen
    for picture in ("curves.png", "confusion_matrix.png", "roc.png", "calibration.png"):
        assert cv2.imread(str(tmp_path / picture)) is not None, picture

    run = RunDir(tmp_path)  # scored with each photo's mirror image too, as medclf-run --tta flip serves it
    images, labels, _ = load_arrays(read_folder(val_dir, run.labels), run.preprocess)
    model = keras.models.load_model(tmp_path / "model.keras", compile=False)
    plain = predict(model, images)
    mean = (plain + predict(model, np.ascontiguousarray(images[:, :, ::-1]))) / 2
    assert not np.allclose(mean, plain)  # the mirror images are scored otherwise: the test can tell
    flipped = evaluate_run(tmp_path / "model.keras", val_dir, tta="flip")
    assert flipped["test_time_augmentation"] == "flip"
    assert flipped["accuracy"] == (decide(mean, run.labels, decision) == labels).mean()

    strict = evaluate_run(tmp_path / "model.keras", val_dir, tmp_path / "eval", target_sensitivity=1.0)
    assert strict["sensitivity"] == 1.0 and 0.0 < strict["threshold"] <= 1.0
    assert (tmp_path / "eval" / "roc.png").is_file() and (tmp_path / "eval" / "metrics.json").is_file()
    record = {path.name: path.read_bytes() for path in (tmp_path / "eval").iterdir()}
    monkeypatch.setattr(pipeline, "plot_reliability", _stopped)  # Ctrl-C after two of the three pictures
    with pytest.raises(KeyboardInterrupt):  # at the run's own threshold: another matrix, other titles
        evaluate_run(tmp_path / "model.keras", val_dir, tmp_path / "eval")
    assert {path.name: path.read_bytes() for path in (tmp_path / "eval").iterdir()} == record  # whole, unmixed

    image = sorted((cataract / "cataract").iterdir())[0]
    namesake = tmp_path / "elsewhere" / image.name  # one file name in two folders: two overlays, none overwritten
    namesake.parent.mkdir()
    namesake.symlink_to(sorted((cataract / "normal").iterdir())[0])
    explained = list(explain_files(tmp_path / "model.keras", [str(image), str(namesake)], tmp_path / "cam",
                                   target="normal"))
    assert [e.label for e in explained] == ["normal", "normal"]
    assert explained[0].heatmap.name == overlay_name(str(image), "normal", "gradcam")
    assert len({e.heatmap for e in explained}) == 2 and len(list((tmp_path / "cam").iterdir())) == 2
    assert cv2.imread(str(explained[0].heatmap)).shape[0] >= 320
    layer = last_conv_layer(keras.models.load_model(tmp_path / "model.keras", compile=False))
    (at_layer,) = explain_files(tmp_path / "model.keras", [str(image)], tmp_path / "cam", target="normal",
                                layer=layer)  # beside the default layer's overlay, not over it
    assert at_layer.heatmap.name == overlay_name(str(image), "normal", f"gradcam-{layer}") != explained[0].heatmap.name
    at_layer.heatmap.unlink()
    explained[0].heatmap.unlink()
    explained[0].heatmap.mkdir()  # a folder in the way: that heatmap is lost, said, and the next one written
    again = list(explain_files(tmp_path / "model.keras", [str(image), str(namesake)], tmp_path / "cam",
                               target="normal"))
    assert "not written (Is a directory)" in again[0].error and again[1].heatmap.is_file()


def _stopped(*args, **kwargs):
    raise KeyboardInterrupt


def test_the_defaults_train_on_tiny_grey_images_with_no_flags(chest_xray, tmp_path):
    """28x28 single-channel PNGs (a MedMNIST-sized dataset): the default recipe takes them as they are."""
    data = tmp_path / "data"
    for name in ("NORMAL", "PNEUMONIA"):
        (data / name).mkdir(parents=True)
        for path in sorted((chest_xray / "test" / name).iterdir())[:12]:
            grey = cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (28, 28), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(data / name / f"{path.stem}.png"), grey)
    result = train(data, tmp_path / "run")
    assert result.metrics["training"]["architecture"] == "mobilenet_v2"
    assert result.metrics["validation"]["images"] >= 2 and (tmp_path / "run" / "model.keras").is_file()


def test_the_same_seed_trains_the_same_model(cataract, tmp_path):
    recipe = Recipe(arch="mobilenet_025", image_size=64, val_split=0.3, fit=FitConfig(epochs=2, head_epochs=1))
    weights = []
    for run in ("first", "second"):
        train(cataract, tmp_path / run, recipe)
        model = keras.models.load_model(tmp_path / run / "model.keras", compile=False)
        weights.append(model.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*weights))


def test_a_class_none_of_whose_images_can_be_read_stops_the_run_before_training(blood_cell_images, tmp_path):
    """It used to train a 'binary' model that only ever answered the other class, and report 100% accuracy."""
    data = tmp_path / "data"
    (data / "cells").mkdir(parents=True)
    (data / "damaged").mkdir()
    for image in blood_cell_images:
        (data / "cells" / image.name).symlink_to(image)
    for i in range(len(blood_cell_images)):
        (data / "damaged" / f"scan{i}.jpg").write_text("not an image")
    with pytest.raises(DatasetError, match=r"no training image of damaged \(\d+\) could be read"):
        train(data, tmp_path / "run", Recipe(arch="small_cnn", image_size=32, val_split=0.3,
                                             fit=FitConfig(epochs=1)))
    assert not (tmp_path / "run").exists()


def test_a_run_written_over_an_earlier_binary_one_keeps_no_threshold_of_it(blood_cells, tmp_path):
    """A 3-class model trained into a binary run's folder was exported with the old run's decision.json, and
    the old model's evaluation sat in the folder as if it were the new one's."""
    recipe = Recipe(arch="small_cnn", image_size=32, val_split=0.3, fit=FitConfig(epochs=1))
    for classes in (("EOSINOPHIL", "LYMPHOCYTE"), ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE")):
        data = tmp_path / f"data{len(classes)}"
        for name in classes:
            (data / name).mkdir(parents=True)
            for image in sorted((blood_cells / "TEST" / name).iterdir())[:6]:
                (data / name / image.name).symlink_to(image)
        train(data, tmp_path / "run", recipe)
        assert (RunDir(tmp_path / "run").decision is None) == (len(classes) == 3)
        if len(classes) == 2:  # scored, as medclf evaluate does by default: those scores go with the old model
            evaluate_run(tmp_path / "run" / "model.keras", data, tmp_path / "run" / "evaluation-data2")
    assert not (tmp_path / "run" / "evaluation-data2").exists()


def test_the_run_records_the_test_images_it_scored_not_those_it_could_not_read(cataract, tmp_path):
    """splits.json lists what each split was made of; export tops verification up from the test split and
    says how many images of it there were."""
    test = tmp_path / "test"
    for name in ("cataract", "normal"):
        (test / name).mkdir(parents=True)
        for image in sorted((cataract / name).iterdir())[:3]:
            (test / name / image.name).symlink_to(image)
        (test / name / "notes.jpg").write_text("not an image")
    result = train(cataract, tmp_path / "run", Recipe(arch="small_cnn", image_size=32, val_split=0.3,
                                                      fit=FitConfig(epochs=1)), test=test)
    paths, labels = RunDir(tmp_path / "run").split("test")
    assert len(paths) == result.metrics["test"]["images"] == 6 and not any("notes" in path for path in paths)
    assert result.metrics["training"]["unreadable"] == {"train": 0, "val": 0, "test": 2}  # said again at the end
    identical = result.metrics["training"]["identical_files"]  # the test photos are training's own: said, counted
    assert identical["across_classes"] == 0 and identical["test_in_train_or_val"] == 6


def test_a_run_labelled_by_file_names_scores_other_data_named_so_without_being_told_again(cataract, tmp_path,
                                                                                         caplog):
    """Trained on ``cataract.0.jpg``-style names (``--name-labels .``), ``medclf evaluate`` of a folder named the
    same way reads its labels the same way: the rule is in the run's metrics.json."""
    from medclf.train.labellers import NameLabels

    for split, chosen in (("train", slice(0, 12)), ("held", slice(12, 16))):
        (tmp_path / split).mkdir()
        for name in ("cataract", "normal"):
            for k, image in enumerate(sorted((cataract / name).iterdir())[chosen]):
                (tmp_path / split / f"{name}.{k}.jpg").symlink_to(image)
    train(tmp_path / "train", tmp_path / "run", Recipe(arch="small_cnn", image_size=32, val_split=0.3,
                                                       fit=FitConfig(epochs=1)), naming=NameLabels("."))
    assert RunDir(tmp_path / "run").metrics["training"]["labelled_by"] == {"file_names": {"separator": ".",
                                                                                          "position": 0}}
    with caplog.at_level("WARNING"):
        scored = evaluate_run(tmp_path / "run" / "model.keras", tmp_path / "held")
    assert scored["images"] == 8
    assert "no class folders; labelled by classes in the file names, as this model's training images" in caplog.text


def test_a_test_sets_roc_picture_names_its_auc_interval_and_what_was_resampled():
    from medclf.train.pipeline import _auc_interval

    binary = {"confidence_intervals": {"roc_auc_macro": [0.955, 0.980], "resampled": "sources", "sources": 427,
                                       "sensitivity": [0.966, 0.992]}, "per_source": {"kind": "patients"}}
    assert _auc_interval({"roc_auc_macro": 0.969}, binary) == "\nROC AUC 0.969, 95% CI 0.955-0.980 over 427 patients"
    cells = {"confidence_intervals": {"roc_auc_macro": [0.946, 0.990], "resampled": "sources", "sources": 100,
                                      "per_class": {}}}
    expected = "\nmacro ROC AUC 0.971, 95% CI 0.946-0.990 over 100 sources"  # more classes: their macro average
    assert _auc_interval({"roc_auc_macro": 0.971}, cells) == expected
    assert _auc_interval({"roc_auc_macro": 0.9}, {}) == ""  # validation: no interval, the title alone


def test_evaluating_a_runs_model_groups_its_files_by_the_runs_own_pattern(cataract, tmp_path):
    """So that `medclf evaluate RUN/model.keras TEST` gives the run's own test scores, per-patient votes and all
    (the chest preset's run counted 427 patients, its evaluation 431, grouping the names its own way)."""
    train(cataract, tmp_path, Recipe(arch="small_cnn", image_size=48, val_split=0.3, group_pattern=r"^\d",
                                     fit=FitConfig(epochs=1)))
    first_digits = {(path.name[0], kind) for kind in ("cataract", "normal") for path in (cataract / kind).iterdir()}
    assert evaluate_run(tmp_path / "model.keras", cataract)["per_source"]["sources"] == len(first_digits)
    whole_names = evaluate_run(tmp_path / "model.keras", cataract, group_pattern=r"^\d+")  # given: it wins
    assert whole_names["per_source"]["sources"] > len(first_digits)


def test_evaluating_a_runs_model_finds_the_augmented_copies_the_run_grouped(cataract, tmp_path):
    """A run told its images are augmented copies (`--group-copies`, as the blood-cells preset) is evaluated on
    its copy groups too: one vote per source image, as its own test scores count them."""
    train(cataract, tmp_path, Recipe(arch="small_cnn", image_size=48, val_split=0.3, group_copies=True,
                                     fit=FitConfig(epochs=1)))
    folder = read_folder(cataract)
    copies = copy_groups(folder.paths, folder.labels)
    assert evaluate_run(tmp_path / "model.keras", cataract)["per_source"]["sources"] == len(set(copies)) < 59
    assert "per_source" not in evaluate_run(tmp_path / "model.keras", cataract, group_copies=False)  # given: wins


def test_a_run_into_the_folder_of_an_earlier_one_sets_it_aside_whole_before_writing(cataract, tmp_path):
    """A rerun that failed after fitting left its history and pictures beside the earlier model and metrics (and
    had deleted the earlier history): one folder, two runs' files."""
    recipe = Recipe(arch="small_cnn", image_size=32, val_split=0.3, fit=FitConfig(epochs=1))
    train(cataract, tmp_path / "run", recipe)
    earlier = (tmp_path / "run" / "metrics.json").read_text()
    broken = tmp_path / "test" / "cataract"
    broken.mkdir(parents=True)
    (broken / "scan.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    with pytest.raises(DatasetError):
        train(cataract, tmp_path / "run", recipe, test=tmp_path / "test")
    assert (tmp_path / "run" / "previous" / "metrics.json").read_text() == earlier  # the earlier run, whole
    assert (tmp_path / "run" / "previous" / "model.keras").is_file()
    assert not (tmp_path / "run" / "model.keras").exists()  # nothing of it left to be taken for this run's
    with pytest.raises(DatasetError):  # failing again: its leftovers go aside, the last finished run stays
        train(cataract, tmp_path / "run", recipe, test=tmp_path / "test")
    assert (tmp_path / "run" / "previous" / "metrics.json").read_text() == earlier
    assert (tmp_path / "run" / "unfinished" / "history.csv").is_file()


def test_an_export_written_into_the_run_folder_goes_aside_with_the_model_it_came_from(cataract, tmp_path):
    """``medclf export RUN_DIR/model.keras --out RUN_DIR``, then training again: the old model's ONNX files and
    report stayed beside the new model (64-px input under a 96-px run)."""
    from medclf.export.pipeline import export_run

    recipe = Recipe(arch="small_cnn", image_size=32, val_split=0.3, fit=FitConfig(epochs=1))
    train(cataract, tmp_path / "run", recipe)
    export_run(tmp_path / "run" / "model.keras", tmp_path / "run", max_images=32)
    exported = sorted(path.name for path in (tmp_path / "run").glob("*") if "onnx" in path.name or
                      path.name == "export_report.json")
    assert exported == ["export_report.json", "model.onnx"]
    train(cataract, tmp_path / "run", recipe)
    assert not any((tmp_path / "run" / name).exists() for name in exported)
    assert all((tmp_path / "run" / "previous" / name).is_file() for name in exported)


def test_the_checkpoint_a_stopped_run_leaves_can_be_evaluated_and_exported(cataract, tmp_path, monkeypatch):
    """Ctrl-C after the first epochs kept checkpoint.keras, as the README says, but no command could read it:
    labels.json and preprocess.json were written only as the run ended."""
    from medclf.train import pipeline

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_calibrated", stopped)  # what follows fitting: Ctrl-C just after it
    with pytest.raises(KeyboardInterrupt):
        train(cataract, tmp_path / "run", Recipe(arch="small_cnn", image_size=32, val_split=0.3,
                                                 fit=FitConfig(epochs=1)))
    assert not (tmp_path / "run" / "model.keras").exists()
    assert evaluate_run(tmp_path / "run" / "checkpoint.keras", cataract)["images"] == 59
    from medclf.export.pipeline import export_run

    exported = export_run(tmp_path / "run" / "checkpoint.keras", tmp_path / "exported", max_images=32)
    assert exported["precisions"]["fp32"]["passed"]


def test_a_run_into_a_folder_another_run_is_writing_is_refused_at_once(cataract, tmp_path):
    """Two runs into one folder both said "wrote": one finished model was lost, their histories interleaved."""
    from medclf.train.pipeline import RunDirBusy
    from tests.train.trees import held_elsewhere

    (tmp_path / "run").mkdir()
    with held_elsewhere(tmp_path / "run"):  # as another process's run holds it
        with pytest.raises(RunDirBusy, match=r"run: another medclf run is writing this folder"):
            train(cataract, tmp_path / "run", Recipe(arch="small_cnn", image_size=32, fit=FitConfig(epochs=1)))
    assert not any((tmp_path / "run").iterdir())  # nothing written, nothing set aside


def test_a_run_folder_on_a_share_without_locks_is_written_and_says_runs_are_not_kept_apart(tmp_path, monkeypatch,
                                                                                          caplog):
    import errno
    import fcntl

    from medclf.train import pipeline as module

    def no_locks(descriptor, operation):  # what flock gives on an NFS mount without a lock daemon
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level("WARNING"), module.writing_run(tmp_path / "run"):
        (tmp_path / "run" / "model.keras").write_text("written")
    assert "run cannot be locked (No locks available): a second run into it at the same time" in caplog.text


def test_a_limit_per_class_says_it_capped_validation_too(cataract, tmp_path, capsys):
    """--limit-per-class caps validation as well: the opening line said "(15% of the images at random)" of 12."""
    result = train(cataract, tmp_path, Recipe(arch="small_cnn", image_size=32, val_split=0.5,
                                              fit=FitConfig(epochs=1)), limit_per_class=5)
    said = result.metrics["training"]["validation_held_out"]
    assert said == "50% of the images at random, then at most 5 of each class: --limit-per-class"
    assert f"10 training images, 10 validation ({said})" in capsys.readouterr().err


def test_a_picture_that_cannot_be_drawn_is_a_warning_and_the_numbers_stand(tmp_path, monkeypatch, caplog):
    """scikit-learn before 1.7 had no curve_kwargs: the ROC's TypeError stopped a run before its model was saved."""
    from medclf.train import pipeline, plots

    def broken(*args, **kwargs):
        raise AttributeError("Line2D.set() got an unexpected keyword argument 'curve_kwargs'")

    monkeypatch.setattr(plots, "roc_figure", broken)
    labels, probabilities = np.array([0, 1, 1, 0]), np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4]])
    metrics = pipeline.report(tmp_path, labels, probabilities, ("NORMAL", "PNEUMONIA"), None, "test")
    assert metrics["accuracy"] == 1.0 and (tmp_path / "confusion_matrix.png").is_file()
    assert f"could not draw {tmp_path / 'roc.png'} (AttributeError: Line2D.set()" in caplog.text


def test_a_model_medclf_did_not_train_is_evaluated_from_a_run_folder_written_by_hand(cataract, tmp_path, caplog):
    """A tutorial's model with labels.json and preprocess.json beside it failed after scoring every image:
    "splits.json: this run did not record its 'train' split". Now scored, the unchecked overlap said."""
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(keras.layers.Rescaling(1 / 255)(inputs)))
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(features)).save(tmp_path / "model.keras")
    (tmp_path / "labels.json").write_text(json.dumps(sorted(p.name for p in cataract.iterdir() if p.is_dir())))
    (tmp_path / "preprocess.json").write_text(json.dumps({"height": 32, "width": 32}))
    metrics = evaluate_run(tmp_path / "model.keras", cataract)
    assert metrics["images"] == sum(1 for path in cataract.rglob("*") if path.is_file()) and \
        "identical_to_training" not in metrics
    assert "records no training images (no splits.json)" in caplog.text
