"""Every exported file says how unlike its training images an image is (``unfamiliarity``, above 1: unlike them),
so the runtime can warn where a call is a guess: measured on real images of another kind."""

from __future__ import annotations

import json

import cv2
import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from sklearn.covariance import LedoitWolf

from medclf.export.familiarity import (MAX_DIRECTIONS, PIXELS, FamiliarityUnavailable, _level, _nearest_distance,
                                       feature_layers, fit, level_names, unfamiliarity, with_features)
from medclf.export.fp16 import to_fp16
from medclf.export.int8 import ImageCalibrationReader, to_int8
from medclf.export.labelled_images import spread
from medclf.export.onnx_export import convert
from medclf.export.pipeline import model_card
from medclf.runtime import Classifier, load_image
from medclf.runtime.cli import main
from medclf.train.architectures import get_architecture
from medclf.train.ensemble import averaged


def images_of(folder, card, most=48) -> np.ndarray:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    return np.stack([load_image(paths[i], card.preprocess) for i in spread(len(paths), most)])


def grey(images: np.ndarray) -> np.ndarray:
    return np.repeat(np.stack([cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) for image in images])[..., None], 3, axis=-1)


@pytest.fixture(scope="module")
def fp32(exported) -> Classifier:
    return Classifier(exported[1]["precisions"]["fp32"]["file"])


def test_images_of_another_kind_are_flagged_and_unseen_ones_of_the_same_kind_rarely(fp32, blood_cells, chest_xray,
                                                                                       cataract):
    """The blood-cell model (48 training cells, one epoch): chest films, eye photos and grey smears lie beyond
    1 (all of them, measured), TEST's smears of other cells mostly within (6 of 96 beyond, measured, where by
    construction 1 verification image in 200 lies beyond: a model fitted on 48 cells, its threshold on 96
    images; the demo's model, on 1,024 of each: 1.5% of TEST)."""
    smears = images_of(blood_cells / "TEST", fp32.card, 96)
    assert np.mean(fp32.unfamiliarity(smears) > 1) <= 0.12
    for other in (images_of(chest_xray / "test", fp32.card), images_of(cataract, fp32.card), grey(smears)):
        assert np.mean(fp32.unfamiliarity(other) > 1) >= 0.9


def test_every_precision_flags_what_fp32_flags(exported, fp32, blood_cells, chest_xray, tmp_path):
    """FP16 and INT8 keep the distances float32 (:func:`~medclf.export.output_nodes.familiarity_nodes`); only the
    features they are measured on move. (This one-epoch model's FP16 and INT8 are refused as classifiers, so
    they are made here as export makes them.)"""
    fp32_file = exported[1]["precisions"]["fp32"]["file"]
    calibration = sorted(str(p) for p in (blood_cells / "TRAIN" / "NEUTROPHIL").iterdir())[:16]
    onnx.save(to_fp16(onnx.load(fp32_file)), str(tmp_path / "fp16.onnx"))
    reader = ImageCalibrationReader(calibration, fp32.card.preprocess)
    onnx.save(to_int8(fp32_file, reader), str(tmp_path / "int8.onnx"))
    files = {"fp32": fp32} | {name: Classifier(tmp_path / f"{name}.onnx") for name in ("fp16", "int8")}
    images = np.concatenate([images_of(blood_cells / "TEST", fp32.card), images_of(chest_xray / "test", fp32.card)])
    flagged = {name: classifier.unfamiliarity(images) > 1 for name, classifier in files.items()}
    assert 0.4 <= np.mean(flagged["fp32"]) <= 0.6  # the films, not the smears
    for name in ("fp16", "int8"):  # measured: FP16 all 96 the same, INT8 93 of 96
        assert np.mean(flagged[name] == flagged["fp32"]) >= 0.92, name
    report = exported[1]
    assert report["familiarity"]["added"] and report["familiarity"]["fitted_on_images"] == 48
    assert 0 < report["precisions"]["fp32"]["unlike_training"] <= 0.02  # its threshold's images: 0.5% beyond it


def test_the_file_computes_what_the_fit_computed(run_dir, exported, blood_cells):
    """The threshold is set by the very function the graph runs: eagerly on Keras' features, as ONNX."""
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    card = model_card(run_dir / "model.keras")
    training, held_out = images_of(blood_cells / "TRAIN", card, 64), images_of(blood_cells / "TEST", card, 64)
    fitted = fit(model, training, None, held_out)
    _, *features = with_features(model, [level.layer for level in fitted.levels]).predict(
        held_out.astype(np.float32), verbose=0)
    expected = unfamiliarity(features, fitted.levels, fitted.threshold).numpy()[:, 0]
    assert np.mean(expected > 1) == pytest.approx(0.5 / 100, abs=1 / 64)  # its own threshold's images
    session = ort.InferenceSession(convert(model, card, familiarity=fitted).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (served,) = session.run(["unfamiliarity"], {"image": held_out})
    np.testing.assert_allclose(served[:, 0], expected, rtol=1e-4)


def test_the_distance_is_ledoit_wolfs_mahalanobis_to_the_nearest_class_mean():
    """Where a level has at most ``MAX_DIRECTIONS`` features every direction is kept and the distance is exact;
    the nearest class counts."""
    rng = np.random.default_rng(0)
    classes = np.repeat([0, 1], 100)
    features = rng.normal(size=(200, 12)) * rng.uniform(0.1, 3, 12) + classes[:, None] * 5.0
    level = _level("test", features, classes)
    residuals = features - np.where(classes[:, None] == 0, features[:100].mean(0), features[100:].mean(0))
    shared = LedoitWolf(assume_centered=True).fit(residuals)
    probe = rng.normal(size=(20, 12)) * 3
    exact = np.minimum(shared.mahalanobis(probe - features[:100].mean(0)),
                       shared.mahalanobis(probe - features[100:].mean(0)))
    np.testing.assert_allclose(_nearest_distance(probe, level).numpy()[:, 0], exact, rtol=1e-4)
    assert MAX_DIRECTIONS >= 12 and level.residual_weight == 0


def test_a_wide_level_keeps_its_main_directions_and_the_rest_as_one_variance():
    """1,280 features (MobileNetV2's classifier input) keep ``MAX_DIRECTIONS``: 1.3 MB, not a 6.5 MB inverse.
    A shift along the directions left out still counts."""
    rng = np.random.default_rng(1)
    features = rng.normal(size=(600, 300)) * np.linspace(3, 0.1, 300)
    level = _level("wide", features, np.zeros(600, int))
    assert level.projection.shape == (300, MAX_DIRECTIONS) and level.residual_weight > 0
    left_out = np.linalg.svd(level.projection, full_matrices=True)[0][:, -1]  # orthogonal to every kept one
    shifted = level.centre + 2.0 * left_out
    assert _nearest_distance(shifted[None], level).numpy()[0, 0] == pytest.approx(4.0 * level.residual_weight,
                                                                               rel=1e-3)


def test_a_model_without_a_dense_head_or_enough_held_out_images_gets_none(run_dir, blood_cells):
    image = keras.Input((64, 64, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(image))
    headless = keras.Model(image, keras.layers.Softmax(name="probabilities")(pooled))
    with pytest.raises(FamiliarityUnavailable, match="no dense head named 'probabilities'"):
        level_names(headless)
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    layers = feature_layers(model)
    assert layers[-1] == "probabilities" and len(layers) >= 3  # stage ends, then the classifier's input
    few = images_of(blood_cells / "TEST", model_card(run_dir / "model.keras"), 20)
    with pytest.raises(FamiliarityUnavailable, match="20 images to set its threshold on place no 99.5th"):
        fit(model, few, None, few)


def test_the_threshold_is_set_on_held_out_images_alone_where_there_are_enough(run_dir, blood_cells):
    """Topped up with training images, which the model knows better, the threshold sat tight: 14% of fresh
    films of the training kind were flagged. With 64 held out, they alone set it; with fewer, the report says
    how many training images set it too."""
    from medclf.export import pipeline
    from medclf.export.held_out import held_out_sets
    from medclf.export.labelled_images import folder_images

    model, card = keras.models.load_model(run_dir / "model.keras", compile=False), model_card(run_dir / "model.keras")
    splits = json.loads((run_dir / "splits.json").read_text())
    training = splits["train"]["paths"][:12]
    test_paths, test_names = folder_images(blood_cells / "TEST")
    for count, threshold_on, among in ((70, 70, 0), (52, 64, 12)):  # 12 training images beside ``count`` held out
        pick = spread(len(test_paths), count)
        paths = [test_paths[i] for i in pick] + training
        names = [test_names[i] for i in pick] + [card.labels[i] for i in splits["train"]["labels"][:12]]
        held_out, _ = held_out_sets(model, card, paths, names, 1024, searching=False, levels=True)
        fitted, record, images = pipeline._familiarity(model, card, run_dir, None, held_out, paths, names)
        assert (record["threshold_on_images"], record["threshold_training_images"]) == (threshold_on, among)
        assert len(images) == threshold_on and fitted is not None


def test_it_is_measured_from_the_runs_training_images_whatever_calibration_images_are_given(run_dir, cataract,
                                                                                           blood_cells, tmp_path):
    """--calibration is FP16's and INT8's: eye photos given there for a blood model made every photo familiar.
    A run that recorded no training images takes calibration images of its own classes only, and too few
    training images to estimate a spread are said (one image ended in a TensorFlow traceback)."""
    from medclf.export import pipeline

    model, card = keras.models.load_model(run_dir / "model.keras", compile=False), model_card(run_dir / "model.keras")
    trained = json.loads((run_dir / "splits.json").read_text())["train"]["paths"]
    assert pipeline._familiar_images(run_dir, cataract, card)[0] == trained
    bare = tmp_path / "bare"  # a run folder without splits.json
    bare.mkdir()
    with pytest.raises(FamiliarityUnavailable, match=r"bare/splits.json.*pass --calibration with real images of "
                                                     r"the model's own kind"):
        pipeline._familiar_images(bare, None, card)
    with pytest.raises(FamiliarityUnavailable, match=r"holds classes that are not the model's \(cataract, normal\)"):
        pipeline._familiar_images(bare, cataract, card)
    one = images_of(cataract, card, 1)
    with pytest.raises(FamiliarityUnavailable, match="1 training images to measure it from estimate no spread"):
        fit(model, one, None, images_of(blood_cells / "TEST", card, 64))


def test_an_ensemble_reads_each_members_levels_on_the_image_as_that_member_sees_it(run_dir, blood_cells, chest_xray):
    """``medclf ensemble`` nests whole models and averages them: the levels are each member's, read where the
    member runs (a smaller one on the image resized), and the file's probabilities stay the ensemble's."""
    card = model_card(run_dir / "model.keras")
    small = get_architecture("small_cnn").build((48, 48, 3), 4, False)  # random weights: the wiring is the point
    ensemble = averaged([keras.models.load_model(run_dir / "model.keras", compile=False), small], (64, 64, 3))
    names = level_names(ensemble)
    first, second = (m.name for m in ensemble.layers if isinstance(m, keras.Model))
    assert names[0] == PIXELS and names[-1] == f"{second}/probabilities"
    assert f"{first}/probabilities" in names and all(n.split("/")[0] in (first, second) for n in names[1:])
    training, held_out = images_of(blood_cells / "TRAIN", card, 96), images_of(blood_cells / "TEST", card, 64)
    probabilities, *_ = with_features(ensemble, names).predict(held_out.astype(np.float32), verbose=0)
    np.testing.assert_allclose(probabilities, ensemble.predict(held_out.astype(np.float32), verbose=0), atol=1e-6)
    fitted = fit(ensemble, training, None, held_out)
    session = ort.InferenceSession(convert(ensemble, card, familiarity=fitted).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    films = images_of(chest_xray / "test", card)
    served, score = session.run(["probabilities", "unfamiliarity"], {"image": np.concatenate([held_out, films])})
    np.testing.assert_allclose(served[:64], probabilities, atol=1e-5)
    assert np.mean(score[:64] > 1) <= 1 / 32 and np.mean(score[64:] > 1) >= 0.9


def test_without_it_the_file_has_probabilities_alone(run_dir):
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    proto = convert(model, model_card(run_dir / "model.keras"))
    assert [output.name for output in proto.graph.output] == ["probabilities"]


def test_medclf_run_marks_and_warns_once_for_images_unlike_the_training_images(exported, blood_cell_images,
                                                                              chest_xray, tmp_path, capsys):
    film = sorted((chest_xray / "test" / "NORMAL").iterdir())[0]
    model = exported[1]["precisions"]["fp32"]["file"]
    csv_file = tmp_path / "out.csv"
    with pytest.raises(SystemExit) as done:
        main(["--model", model, "--csv", str(csv_file), str(blood_cell_images[0]), str(film)])
    assert done.value.code == 0  # a warning, not a failure: the call is still made
    out, err = capsys.readouterr()
    rows = out.splitlines()[1:]
    assert "UNLIKE TRAINING" not in rows[0] and "UNLIKE TRAINING" in rows[1]
    assert f"warning: {film} is unlike the images the model was trained on" in err
    among = exported[1]["familiarity"]["threshold_training_images"]  # this small run held out 24 cells
    assert among > 0 and f"99.5% of its verification images, {among} of them training images it knows better" in err
    header, *lines = csv_file.read_text().splitlines()
    assert header.split(",")[4] == "unfamiliarity" and float(lines[1].split(",")[4]) > 1
    with pytest.raises(SystemExit):
        main(["--model", model, "--json", str(film)])
    answer = json.loads(capsys.readouterr().out)
    assert answer["unlike_training"] is True and answer["unfamiliarity"] > 1


def test_evaluating_a_file_counts_and_names_the_images_unlike_its_training_images(exported, blood_cells,
                                                                                    chest_xray, tmp_path):
    """A test folder into which chest films have strayed: scored all the same, and said."""
    from medclf.train.pipeline import evaluate_run

    for cls in ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"):
        (tmp_path / cls).mkdir()
        for path in sorted((blood_cells / "TEST" / cls).iterdir())[::60][:8]:
            (tmp_path / cls / path.name).symlink_to(path)
    films = sorted((chest_xray / "test" / "NORMAL").iterdir())[:3]
    for film in films:
        (tmp_path / "NEUTROPHIL" / film.name).symlink_to(film)
    metrics = evaluate_run(exported[1]["precisions"]["fp32"]["file"], tmp_path, group_copies=False)
    unlike = metrics["unlike_training"]
    assert unlike["images"] == 35 and 3 <= unlike["count"] <= 5
    assert set(unlike["examples"]) == {str(tmp_path / "NEUTROPHIL" / film.name) for film in films}


def test_the_demo_says_how_many_test_images_are_unlike_the_training_images(exported, blood_cell_images,
                                                                            chest_xray, tmp_path):
    import io

    from rich.console import Console

    from medclf.train.demo import _score_test

    for image in blood_cell_images:
        (tmp_path / image.parent.name).mkdir(exist_ok=True)
        (tmp_path / image.parent.name / image.name).symlink_to(image)
    film = sorted((chest_xray / "test" / "NORMAL").iterdir())[0]
    (tmp_path / "NEUTROPHIL" / film.name).symlink_to(film)
    out, model = io.StringIO(), exported[1]["precisions"]["fp32"]["file"]
    _score_test(model, tmp_path, Console(file=out, width=300))
    classifier = Classifier(model)
    files = [*blood_cell_images, film]
    flagged = int(np.sum(classifier.unfamiliarity(np.stack([load_image(f, classifier.card.preprocess)
                                                             for f in files])) > 1))
    assert flagged >= 1 and classifier.unfamiliarity(load_image(film, classifier.card.preprocess)[None])[0] > 1
    assert f"{flagged} of the 9 TEST images ({flagged / 9:.1%}) are unlike the training images" in out.getvalue()
