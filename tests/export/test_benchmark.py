"""``medclf benchmark``: Keras and every ONNX precision of one model, side by side, as a table and JSON."""

from __future__ import annotations

import json

from typer.testing import CliRunner

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
