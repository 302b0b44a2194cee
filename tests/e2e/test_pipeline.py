"""End to end through the three commands a user types: medclf train → medclf export → medclf-run."""

from __future__ import annotations

import json
import subprocess
import sys

from medclf.train.quiet_tensorflow import NOTICES


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    notices = [line for line in done.stderr.splitlines() if NOTICES.search(line.encode())]
    assert not notices, f"TensorFlow's start-up notices reached the user: {notices}"
    return done


def test_train_export_run_on_real_blood_cells(blood_cells, blood_cell_images, tmp_path):
    run_dir, exported = tmp_path / "run", tmp_path / "exported"
    trained = cli("medclf.train.cli", "train", blood_cells / "TRAIN", "--out", run_dir, "--test", blood_cells / "TEST",
                  "--arch", "mobilenet_025", "--image-size", "64", "--head-epochs", "1", "--epochs", "2",
                  "--limit-per-class", "25")
    assert "\n\n" not in trained.stderr  # progress bars are for terminals: in a log they left blank lines
    assert ("4 classes (EOSINOPHIL 25, LYMPHOCYTE 25, MONOCYTE 25, NEUTROPHIL 25): 100 training images, "
            "100 validation (15% of the images, whole sources at a time, then at most 25 of each class: "
            "--limit-per-class), 2,487 test") in trained.stderr
    assert ("training MobileNet alpha 0.25 (tiny) from ImageNet weights at 64x64 px: a new head on its frozen "
            "features for 1 epoch, then the layers after conv_pw_11_relu fine-tuned for up to 2 more; time budget "
            "28 min") in trained.stderr  # said before the decoding and fitting, so a wrong choice shows at once
    assert "final weights: " in trained.stdout and "fine-tuned: " in trained.stdout  # the mix, as validation chose
    assert f"next: medclf export {run_dir / 'model.keras'} (into {run_dir / 'exported'}), then medclf-run" in \
        trained.stdout
    for name in ("model.keras", "labels.json", "history.csv", "metrics.json"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["images"] == 2487 and set(metrics["test"]["per_class"]) == {
        "EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"}
    cells = metrics["test"]["per_source"]  # TEST is augmented copies of 100 cells: found, and each votes once
    assert cells["sources"] == 100 and {k: v["sources"] for k, v in cells["per_class"].items()} == {
        "EOSINOPHIL": 17, "LYMPHOCYTE": 12, "MONOCYTE": 4, "NEUTROPHIL": 67}
    assert "test, one vote per source: accuracy" in trained.stdout and "over 100 sources" in trained.stdout
    intervals = metrics["test"]["confidence_intervals"]  # resampled by cell: as wide as 100 cells allow
    assert intervals["resampled"] == "sources" and intervals["sources"] == 100
    low, high = intervals["accuracy"]
    assert low <= metrics["test"]["accuracy"] <= high and high - low > 0.08
    assert "test, 95% confidence intervals (1000 resamples of its 100 sources): accuracy" in trained.stdout
    assert len((run_dir / "history.csv").read_text().splitlines()) == 4  # header, 1 head epoch, 2 fine-tuning
    # 25 held-out cells a class: too few to fit a temperature on, and the run says nothing of one
    assert metrics["training"]["temperature"] is None and "calibrated on validation" not in trained.stdout

    cli("medclf.train.cli", "evaluate", run_dir / "model.keras", blood_cells / "TEST", "--out", tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["accuracy"] == metrics["test"]["accuracy"]
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 1000

    bracketed = tmp_path / "eye [left].jpeg"  # printed as written: rich read "[left]" as markup and dropped it
    bracketed.write_bytes(blood_cell_images[0].read_bytes())
    done = cli("medclf.train.cli", "explain", run_dir / "model.keras", bracketed, "--out", tmp_path / "cam")
    (heatmap,) = (tmp_path / "cam").glob("*.gradcam.png")
    assert f"{bracketed}: " in done.stdout and str(heatmap) in done.stdout.replace("\n", "")

    cli("medclf.train.cli", "export", run_dir / "model.keras", "--out", exported)
    report = json.loads((exported / "export_report.json").read_text())
    assert report["passed"] and report["images"] == 256  # its 100 held-out cells, and TEST's to judge a tolerance
    assert "100 held-out validation, 156 test images" in report["verified_on"]

    cli("medclf.train.cli", "evaluate", exported / "model.onnx", blood_cells / "TEST", "--out", tmp_path / "onnx")
    onnx_metrics = json.loads((tmp_path / "onnx" / "metrics.json").read_text())
    assert onnx_metrics["images"] == 2487 and abs(onnx_metrics["accuracy"] - metrics["test"]["accuracy"]) <= 0.002
    assert onnx_metrics["per_source"]["per_class"] == cells["per_class"]  # copies found by the ONNX path too
    keras_metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert onnx_metrics["identical_to_training"] == keras_metrics["identical_to_training"]  # the file names its run

    done = cli("medclf.runtime.cli", "--model", exported / "model.onnx", "--json", *blood_cell_images)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == len(blood_cell_images)
    assert {line["label"] for line in lines} <= set(json.loads((run_dir / "labels.json").read_text()))
