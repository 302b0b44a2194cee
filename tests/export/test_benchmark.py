"""``medclf benchmark``: Keras and every ONNX precision of one model, side by side, as a table and JSON; or one
exported ONNX file alone, on the machine and backend that serve it."""

from __future__ import annotations

import json
import subprocess
import sys

import onnxruntime as ort
from typer.testing import CliRunner

from medclf.rundir import RunDir
from medclf.runtime import DEFAULT_MODEL
from medclf.train.cli import app


def test_benchmark_compares_keras_with_each_exported_precision(run_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["benchmark", str(run_dir / "model.keras"), "--images", "16",
                                      "--precision", "fp32,int8", "--json-out", str(out)], terminal_width=160)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert [row["format"] for row in rows] == ["Keras", "ONNX fp32", "ONNX int8"]
    keras_row, fp32, int8 = rows
    assert fp32["accuracy"] == keras_row["accuracy"] and fp32["agreement"] == 1.0 and fp32["passed"]
    assert int8["size_mb"] < fp32["size_mb"] < keras_row["size_mb"] * 1.2
    for row in rows:
        assert row["ms_per_image"] > 0 and row["images_per_s"] > 0
        assert row["format"] in result.output
    assert not list(tmp_path.glob("*.onnx"))  # the exported files were only for measuring
    # 16 images set no unfamiliarity threshold: the files timed lack the output a default export adds, said so
    familiarity = json.loads(out.read_text())["familiarity"]
    assert not familiarity["added"] and "timed without the unfamiliarity output export adds" in result.output


def test_accuracy_is_the_held_out_images_alone_where_verification_borrowed_training_images(run_dir, tmp_path):
    """A small run's 48 validation images are topped up with its training images to verify on; those the model
    knows, so every accuracy over them read higher than the run's own validation accuracy."""
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["benchmark", str(run_dir / "model.keras"), "--images", "80",
                                      "--precision", "fp32", "--json-out", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    benchmarked, held_out = json.loads(out.read_text()), len(RunDir(run_dir).split("val")[0])
    assert benchmarked["images"] == 80 > held_out and "training" in benchmarked["verified_on"]
    assert "calibration" not in benchmarked["verified_on"]  # no INT8 asked for: no calibration images to name
    assert benchmarked["accuracy_on"] == f"the {held_out} held-out validation images alone"
    keras_row, fp32 = benchmarked["rows"]
    assert keras_row["accuracy"] == RunDir(run_dir).metrics["validation"]["accuracy"] == fp32["accuracy"]
    assert f"accuracy on the {held_out} held-out validation images alone" in " ".join(result.output.split())


def medclf(*args: str) -> subprocess.CompletedProcess:
    """``medclf ARGS`` in a fresh process that then says whether TensorFlow was loaded."""
    code = ("import sys\nfrom medclf.train.cli import app\ntry:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('exit', e.code, 'tensorflow' in sys.modules)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_an_exported_file_is_benchmarked_alone_without_tensorflow(blood_cells, tmp_path):
    """On the machine that serves it, where only the runtime may be installed: accuracy on labelled images
    called as medclf-run calls them, latency and throughput, no Keras model needed."""
    out = tmp_path / "bench.json"
    done = medclf("benchmark", str(DEFAULT_MODEL), "--data", str(blood_cells / "TEST"), "--images", "64",
                  "--json-out", str(out))
    assert done.stdout.strip().endswith("exit 0 False"), done.stdout + done.stderr  # and no TensorFlow
    result = json.loads(out.read_text())
    row, int8 = result["rows"]  # the packaged model.onnx, then the INT8 file exported beside it
    assert row["format"] == "ONNX fp32" and result["images"] == 64 and result["backend"] == "cpu"
    assert row["accuracy"] > 0.7 and row["ms_per_image"] > 0 and row["images_per_s"] > 0
    assert "ONNX fp32" in done.stdout and "ONNX int8" in done.stdout
    assert int8["format"] == "ONNX int8" and int8["file"] == "model.int8.onnx" and int8["agreement"] > 0.9
    assert f"64 images from {blood_cells / 'TEST'}" in done.stdout  # which images the accuracy is on
    assert row["agreement"] is None and result["agreement_with"] == "model.onnx"

    shouted = tmp_path / "MODEL.ONNX"  # as a Windows share may name it; --verify-data, as export calls the option
    shouted.write_bytes(DEFAULT_MODEL.read_bytes())
    done = medclf("benchmark", str(shouted), "--verify-data", str(blood_cells / "TEST"), "--images", "8",
                  "--precision", "fp32", "--json-out", str(out))
    assert done.stdout.strip().endswith("exit 0 False"), done.stdout + done.stderr
    assert [r["file"] for r in json.loads(out.read_text())["rows"]] == ["MODEL.ONNX"]


def test_an_exported_file_needs_labelled_images_and_a_backend_that_starts(blood_cells, tmp_path):
    no_data = medclf("benchmark", str(DEFAULT_MODEL), "--json-out", str(tmp_path / "b.json"))
    assert no_data.stdout.strip().endswith("exit 1 False") and "pass --data" in no_data.stdout + no_data.stderr
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        no_gpu = medclf("benchmark", str(DEFAULT_MODEL), "--data", str(blood_cells / "TEST"), "--images", "8",
                        "--backend", "cuda", "--json-out", str(tmp_path / "b.json"))
        output = no_gpu.stdout + no_gpu.stderr
        assert no_gpu.stdout.strip().endswith("exit 1 False") and "cuda: this onnxruntime has no" in output
        assert "Traceback" not in output
    assert not (tmp_path / "b.json").exists()


def test_a_json_path_that_cannot_be_written_or_an_unknown_precision_is_refused_before_any_work(blood_cells,
                                                                                               tmp_path):
    """The whole run (minutes on a real model) ended in a FileExistsError traceback; int9 gave fp32 alone."""
    (tmp_path / "taken").write_text("a file, not a folder")
    bad_path = medclf("benchmark", str(DEFAULT_MODEL), "--data", str(blood_cells / "TEST"),
                      "--json-out", str(tmp_path / "taken" / "b.json"))
    assert "exit 2 False" in bad_path.stdout and "Traceback" not in bad_path.stdout + bad_path.stderr
    typo = medclf("benchmark", str(DEFAULT_MODEL), "--data", str(blood_cells / "TEST"), "--precision", "int9",
                  "--json-out", str(tmp_path / "b.json"))
    assert typo.stdout.strip().endswith("exit 1 False") and "unknown precision int9" in typo.stdout + typo.stderr
    calibrated = medclf("benchmark", str(DEFAULT_MODEL), "--data", str(blood_cells / "TEST"), "--calibration",
                        str(blood_cells / "TRAIN"), "--json-out", str(tmp_path / "b.json"))  # was ignored silently
    assert "exit 2 False" in calibrated.stdout and "already calibrated" in " ".join(calibrated.stderr.split())
    assert not (tmp_path / "b.json").exists()
