"""Training end to end without a frozen part (small CNN, augmented tf.data batches) on a real binary task."""

from __future__ import annotations

import json

from medclf.train.fit import FitConfig
from medclf.train.pipeline import evaluate_run, train


def test_small_cnn_trains_on_cataract_photos_and_reports_binary_metrics(cataract, tmp_path):
    result = train(cataract, tmp_path, arch="small_cnn", image_size=(48, 64), val_split=0.3,
                   config=FitConfig(epochs=2))
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
    assert evaluate_run(tmp_path / "model.keras", val_dir)["accuracy"] == validation["accuracy"]
