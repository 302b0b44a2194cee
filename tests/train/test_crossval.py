"""K-fold cross-validation on the real 59-image cataract set: every image is scored exactly once."""

from __future__ import annotations

import json

import pytest

from medclf.train.crossval import cross_validate
from medclf.train.fit import FitConfig
from medclf.train.pipeline import Recipe


def test_each_fold_scores_its_held_out_images_and_the_summary_has_mean_and_spread(cataract, tmp_path):
    recipe = Recipe(arch="small_cnn", image_size=48, val_split=0.2, fit=FitConfig(epochs=1))
    summary = cross_validate(cataract, tmp_path, recipe, folds=3)
    assert sum(fold["images"] for fold in summary["per_fold"]) == 59 == summary["images"]
    assert summary["accuracy"]["folds"] == 3 and summary["accuracy"]["std"] >= 0.0
    assert 0.0 <= summary["accuracy"]["mean"] <= 1.0 and summary["sensitivity"] is not None
    assert json.loads((tmp_path / "crossval.json").read_text())["folds"] == 3
    pooled = summary["pooled"]  # every image called once, by the fold that held it out
    right = sum(fold["accuracy"] * fold["images"] for fold in summary["per_fold"])
    assert pooled["images"] == 59 and pooled["accuracy"] * 59 == round(right)
    low, high = pooled["confidence_intervals"]["accuracy"]
    assert low <= pooled["accuracy"] <= high
    assert pooled["confidence_intervals"]["sources"] == 58  # the photo the set holds twice is resampled as one
    assert all((tmp_path / f"fold{k}" / "model.keras").is_file() for k in range(3))

    again = cross_validate(cataract, tmp_path, recipe, folds=2)  # fewer folds into the same folder
    assert again["folds"] == 2 and sorted(p.name for p in tmp_path.glob("fold*")) == ["fold0", "fold1"]
    assert json.loads((tmp_path / "previous" / "crossval.json").read_text())["folds"] == 3  # set aside as it began
    assert (tmp_path / "previous" / "fold2" / "model.keras").is_file()  # with the fold it counts and this one not
    cross_validate(cataract, tmp_path, recipe, folds=2)  # once more: previous/ holds one run, not two mixed
    assert json.loads((tmp_path / "previous" / "crossval.json").read_text())["folds"] == 2
    assert not (tmp_path / "previous" / "fold2").exists()


def test_a_rerun_stopped_midway_leaves_no_summary_of_the_folds_it_replaced(cataract, tmp_path, monkeypatch):
    """Its first fold replaced, the earlier summary goes aside; a rerun refused before writing leaves both."""
    from medclf.train import crossval

    (tmp_path / "crossval.json").write_text('{"folds": 3}')
    with pytest.raises(ValueError, match="small_cnn trains from scratch"):  # refused before anything is written
        cross_validate(cataract, tmp_path, Recipe(arch="small_cnn", image_size=48, freeze_until="pool"), folds=3)
    assert (tmp_path / "crossval.json").is_file() and not (tmp_path / "previous").exists()

    def interrupted(*args, before_writing, **kwargs):  # Ctrl-C as the first fold trains
        before_writing()
        raise KeyboardInterrupt

    monkeypatch.setattr(crossval, "train_splits", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cross_validate(cataract, tmp_path, Recipe(arch="small_cnn", image_size=48), folds=3)
    assert not (tmp_path / "crossval.json").exists() and (tmp_path / "previous" / "crossval.json").is_file()


def test_a_cross_validation_into_a_folder_another_is_writing_is_refused_before_any_fold(cataract, tmp_path):
    """The lock was taken fold by fold: a second run replaced the first's fold0 before it was refused at fold1."""
    from medclf.train.pipeline import RunDirBusy, writing_run
    from tests.train.trees import held_elsewhere

    (tmp_path / "fold0").mkdir()
    (tmp_path / "fold0" / "metrics.json").write_text("{}")
    with held_elsewhere(tmp_path):  # as another process's cross-validation holds it
        with pytest.raises(RunDirBusy, match="another medclf run is writing this folder"):
            cross_validate(cataract, tmp_path, Recipe(arch="small_cnn", image_size=48), folds=3)
    assert (tmp_path / "fold0" / "metrics.json").read_text() == "{}" and not (tmp_path / "fold0" / "previous").exists()
    with writing_run(tmp_path), writing_run(tmp_path):  # held again by the process holding it: one lock
        pass


def test_a_folds_one_vote_per_patient_counts_the_patients_the_folds_were_drawn_by(blood_cell_images, tmp_path):
    """IDC-style ``<patient>/{0,1}/``: fourteen patients make the folds; each fold holds seven, too few to be
    found as patients again on their own, so the fold is scored by the groups it was drawn by."""
    for k, patient in enumerate(range(10253, 10267)):
        for label in "01":
            (tmp_path / "data" / str(patient) / label).mkdir(parents=True)
            for i in range(3):
                image = blood_cell_images[(6 * k + 3 * int(label) + i) % len(blood_cell_images)]
                (tmp_path / "data" / str(patient) / label / f"{i}.png").symlink_to(image)
    recipe = Recipe(arch="small_cnn", image_size=32, fit=FitConfig(epochs=1))
    summary = cross_validate(tmp_path / "data", tmp_path / "cv", recipe, folds=2)
    for fold in summary["per_fold"]:
        assert fold["per_source"]["kind"] == "patients"
        assert fold["per_source"]["sources"] == 14  # seven patients, each with both classes
    intervals = summary["pooled"]["confidence_intervals"]  # the fourteen patients resampled, not their 84 images
    assert intervals["resampled"] == "sources" and intervals["sources"] == 14


def test_a_class_whose_images_are_one_patients_is_refused_before_any_fold_trains(blood_cell_images, tmp_path):
    """One fold holds that patient out whole and has nothing of the class to train on: found, before, only after
    training the folds before it."""
    for i in range(12):
        (tmp_path / "data" / "common").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "common" / f"p{i}_1.png").symlink_to(blood_cell_images[i % 4])
    (tmp_path / "data" / "rare").mkdir()
    for i in range(6):
        (tmp_path / "data" / "rare" / f"p99_{i}.png").symlink_to(blood_cell_images[4 + i % 4])
    recipe = Recipe(arch="small_cnn", image_size=32, group_pattern=r"^(p\d+)_", fit=FitConfig(epochs=1))
    with pytest.raises(ValueError, match=r"fold \d of 3 would train on fewer than 2 images of rare"):
        cross_validate(tmp_path / "data", tmp_path / "cv", recipe, folds=3)
    assert not (tmp_path / "cv").exists()


def test_the_time_budget_is_the_whole_commands_shared_by_the_folds_still_to_train():
    """Each of five folds took the default 28 minutes: over two hours for one command whose budget says 28."""
    import dataclasses
    import time

    from medclf.train.crossval import _fold_share

    recipe = Recipe()
    recipe = dataclasses.replace(recipe, fit=dataclasses.replace(recipe.fit, time_budget=10.0))
    four_minutes_ago = time.monotonic() - 240
    assert _fold_share(recipe, four_minutes_ago, 3).fit.time_budget == pytest.approx(2.0, abs=0.01)
    assert _fold_share(recipe, time.monotonic() - 900, 1).fit.time_budget == 0.0  # overrun: one batch a stage
    unlimited = dataclasses.replace(recipe, fit=dataclasses.replace(recipe.fit, time_budget=None))
    assert _fold_share(unlimited, four_minutes_ago, 3).fit.time_budget is None
