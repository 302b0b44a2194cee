"""K-fold cross-validation on the real 59-image cataract set: every image is scored exactly once."""

from __future__ import annotations

import json

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
    assert all((tmp_path / f"fold{k}" / "model.keras").is_file() for k in range(3))

    again = cross_validate(cataract, tmp_path, recipe, folds=2)  # fewer folds into the same folder
    assert again["folds"] == 2 and sorted(p.name for p in tmp_path.glob("fold*")) == ["fold0", "fold1"]
