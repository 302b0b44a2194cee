"""``medclf ensemble``: trained runs averaged into one model that exports and serves as one file."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medclf.export.pipeline import export_run
from medclf.rundir import RunDir
from medclf.runtime import Classifier, load_image
from medclf.train.ensemble import ensemble_runs
from medclf.train.fit import FitConfig
from medclf.train.pipeline import Recipe, train

TINY = FitConfig(epochs=1, head_epochs=1, augment_views=0)


def patients_test(folder, images):
    """8 cells filed as 3 patients' images, named as the members' split names patients."""
    for i, image in enumerate(images):
        (folder / image.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / image.parent.name / f"patient{i // 3}_{i}{image.suffix}").symlink_to(image)
    return folder


@pytest.fixture(scope="module")
def members(blood_cells, blood_cell_images, tmp_path_factory):
    """Two kinds of model on the same held-out cells: MobileNet 0.25 at 64 px and a small CNN at 48 px."""
    runs, test = [], patients_test(tmp_path_factory.mktemp("test"), blood_cell_images)
    for arch, size in (("mobilenet_025", 64), ("small_cnn", 48)):
        out = tmp_path_factory.mktemp(arch)
        train(blood_cells / "TRAIN", out, Recipe(arch=arch, image_size=size, val_split=0.5, fit=TINY,
                                                 group_pattern=r"^patient\d+"), test=test, limit_per_class=12,
              cache_dir=None)
        runs.append(out)
    return runs


def test_the_ensemble_answers_the_mean_of_its_members_a_smaller_one_seeing_the_image_resized(members, tmp_path,
                                                                                           blood_cell_images):
    test = patients_test(tmp_path / "test", blood_cell_images)
    metrics = ensemble_runs(members, tmp_path / "pair", test)
    intervals = metrics["test"]["confidence_intervals"]  # resampled by the patients the members' split knew
    assert intervals["resampled"] == "sources" and intervals["sources"] == 3
    assert metrics["training"]["recipe"]["group_pattern"] == r"^patient\d+"  # for medclf evaluate to group alike
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "checkpoint.keras").write_text("a single run's, trained in this folder before")
    again = ensemble_runs(members, tmp_path / "again")  # no --test: the test images the members recorded
    assert again["test"]["images"] == 8 and again["test"]["confidence_intervals"]["sources"] == 3
    assert not (tmp_path / "again" / "checkpoint.keras").exists()
    run = RunDir(tmp_path / "pair")
    assert run.preprocess.shape == (64, 64, 3) and run.labels == RunDir(members[0]).labels
    assert run.split("val") == RunDir(members[0]).split("val") and metrics["validation"]["images"] > 0
    assert metrics["training"]["members"] == [str(m.resolve()) for m in members]
    paths = run.split("val")[0][:8]
    images = np.stack([load_image(p, run.preprocess) for p in paths]).astype(np.float32)
    big, small = (keras.models.load_model(m / "model.keras", compile=False) for m in members)
    expected = (big.predict(images, verbose=0) + small.predict(keras.layers.Resizing(48, 48)(images), verbose=0)) / 2
    pair = keras.models.load_model(tmp_path / "pair" / "model.keras", compile=False)
    np.testing.assert_allclose(pair.predict(images, verbose=0), expected, atol=1e-5)
    report = export_run(tmp_path / "pair" / "model.keras", tmp_path / "exported", ("fp32", "int8"), max_images=16,
                        strict=False)
    assert report["precisions"]["fp32"]["passed"] and report["precisions"]["int8"]["search"]  # quantized, judged
    served = Classifier(tmp_path / "exported" / "model.onnx")
    np.testing.assert_allclose(served.predict(images.astype(np.uint8)), expected, atol=1e-4)


def test_members_that_held_out_other_images_or_name_other_classes_are_refused(members, blood_cells, cataract,
                                                                               tmp_path):
    other_seed = tmp_path / "seed1"
    train(blood_cells / "TRAIN", other_seed, Recipe(arch="small_cnn", image_size=48, val_split=0.5,
                                                    fit=FitConfig(epochs=1, head_epochs=1, augment_views=0, seed=1)),
          limit_per_class=12, cache_dir=None)
    with pytest.raises(ValueError, match="held out other validation images.*same --seed"):
        ensemble_runs([members[0], other_seed], tmp_path / "no")
    eyes = tmp_path / "eyes"
    train(cataract, eyes, Recipe(arch="small_cnn", image_size=48, val_split=0.5, fit=TINY), cache_dir=None)
    with pytest.raises(ValueError, match="labels .* differ"):
        ensemble_runs([members[0], eyes], tmp_path / "no")


def test_a_member_of_another_shape_is_refused_rather_than_shown_the_images_squeezed(members, blood_cells, tmp_path):
    wide = tmp_path / "wide"
    train(blood_cells / "TRAIN", wide, Recipe(arch="small_cnn", image_size=(48, 64), val_split=0.5, fit=TINY,
                                              group_pattern=r"^patient\d+"), limit_per_class=12, cache_dir=None)
    with pytest.raises(ValueError, match=r"images are 48x64 \(height x width\), .*64x64: averaged, one would see "
                                         "the images squeezed"):
        ensemble_runs([members[0], wide], tmp_path / "no")


def test_a_member_preprocessed_otherwise_is_refused_naming_what_differs(members, tmp_path):
    """A run trained before shrink_all existed (its preprocess.json lacks it) was "differs ... in more than size"."""
    import json
    import shutil

    older = tmp_path / "older"
    shutil.copytree(members[1], older)
    recorded = json.loads((older / "preprocess.json").read_text())
    del recorded["shrink_all"]
    (older / "preprocess.json").write_text(json.dumps(recorded))
    with pytest.raises(ValueError, match=r"its preprocessing differs from .*\(shrink_all False vs True\): members "
                                         "must see the images alike"):
        ensemble_runs([members[0], older], tmp_path / "no")


def test_an_ensemble_never_replaces_a_member_and_sets_an_earlier_run_in_its_folder_aside(members, cataract,
                                                                                        tmp_path):
    """--out a member replaced its trained model (and left its old exports beside the ensemble's)."""
    with pytest.raises(ValueError, match="one of the members; the ensemble needs a folder of its own"):
        ensemble_runs(members, members[0])
    out = tmp_path / "pair"
    ensemble_runs(members, out)
    first = (out / "model.keras").read_bytes()
    (out / "exported").mkdir()
    (out / "exported" / "model.onnx").write_bytes(b"the earlier ensemble's export")
    with pytest.raises(ValueError):  # a test folder of other classes: refused, and the folder as it was
        ensemble_runs(members, out, test=cataract)
    assert (out / "model.keras").read_bytes() == first and not (out / "previous").exists()
    ensemble_runs(members, out)
    assert (out / "previous" / "model.keras").read_bytes() == first
    assert (out / "previous" / "exported" / "model.onnx").is_file() and not (out / "exported").exists()


def test_members_inside_the_ensembles_folder_stay_and_its_earlier_export_is_set_aside(members, tmp_path):
    """Averaged again into the folder holding them (a preset's OUT/members), the old ensemble's export stayed
    beside the new model and was served as it."""
    import shutil

    out = tmp_path / "preset"
    inside = [shutil.copytree(member, out / "members" / f"{k}-member") for k, member in enumerate(members)]
    ensemble_runs(inside, out)
    (out / "exported").mkdir()
    (out / "exported" / "model.onnx").write_bytes(b"the earlier ensemble's export")
    ensemble_runs(inside, out)
    assert (out / "previous" / "exported" / "model.onnx").is_file() and not (out / "exported").exists()
    assert all((member / "model.keras").is_file() for member in inside)


def test_runs_of_one_architecture_average_and_the_ensemble_is_explained_with_grad_cam(members, tmp_path):
    """Two runs of one architecture share its model name (here one run twice); the ensemble renames its members,
    and ``medclf explain`` draws its heatmaps from every member's last feature map."""
    from medclf.train.explain import explain_files

    ensemble_runs([members[1], members[1]], tmp_path / "twins")
    twins = keras.models.load_model(tmp_path / "twins" / "model.keras", compile=False)
    assert [layer.name for layer in twins.layers][1:3] == ["member0_small_cnn", "member1_small_cnn"]
    paths = RunDir(tmp_path / "twins").split("val")[0][:2]
    explained = list(explain_files(tmp_path / "twins" / "model.keras", paths, tmp_path / "heat"))
    assert all(item.error is None and item.heatmap.is_file() for item in explained) and len(explained) == 2


def test_an_ensemble_preset_trains_its_members_in_turn_on_what_is_left_of_one_budget(blood_cells, tmp_path):
    """``medclf train --preset chest-xray-pair``'s way: members under OUT/members, the average in OUT, and the
    second member's budget what the first left of the whole run's, less the averaging's share."""
    from medclf.train.ensemble import ENSEMBLING_MINUTES, train_ensemble

    budget = FitConfig(epochs=1, head_epochs=1, augment_views=0, time_budget=30.0)
    recipes = [Recipe(arch=arch, image_size=size, val_split=0.5, fit=budget)
               for arch, size in (("mobilenet_025", 64), ("small_cnn", 48))]
    result = train_ensemble(blood_cells / "TRAIN", tmp_path / "pair", recipes, limit_per_class=12)
    members = sorted((tmp_path / "pair" / "members").iterdir())
    assert [m.name for m in members] == ["0-mobilenet_025", "1-small_cnn"]
    assert result.metrics["training"]["members"] == [str(m.resolve()) for m in members]
    assert (tmp_path / "pair" / "model.keras").is_file() and result.metrics["validation"]["images"] > 0
    first, second = (RunDir(m).metrics["training"] for m in members)
    assert first["recipe"]["fit"]["time_budget"] <= 30.0 - ENSEMBLING_MINUTES  # what was left as it started
    spent = (first["seconds"] - 0.05) / 60  # recorded to a tenth of a second
    assert second["recipe"]["fit"]["time_budget"] <= 30.0 - ENSEMBLING_MINUTES - spent
