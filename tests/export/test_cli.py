"""``medclf export``: the per-precision table, a non-zero exit when a file was refused, clear refusals up front."""

from __future__ import annotations

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from medclf.train.cli import app

runner = CliRunner()


def test_export_prints_one_row_per_precision_and_writes_the_report(run_dir, tmp_path):
    result = runner.invoke(app, ["export", str(run_dir / "model.keras"), "--out", str(tmp_path), "--precision",
                                 "fp32,int8", "--verify-images", "16"], terminal_width=160)
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert report["images"] == 16 and list(report["precisions"]) == ["fp32", "int8"]
    # INT8's agreement and every speed hold for the CPU they were measured on, which the report and table name.
    assert report["cpu"]["int8_dot_product"] in (True, False, None) and report["cpu"]["name"] in result.output
    assert result.exit_code == (0 if report["passed"] else 1), result.output
    for name, entry in report["precisions"].items():
        shown = f"{int(entry['agreement'] * 1000 + 1e-9) / 10:.1f}%"  # rounded down: 98.99% is no "99.0%"
        assert f"{name} " in result.output and shown in result.output
    if not report["precisions"]["int8"]["passed"]:
        assert "model.int8.onnx not written: agreement" in result.output
    else:  # 16 images: the search had no others to count on, and its verdict is marked so
        assert report["precisions"]["int8"]["search_counted"]
        assert "ok*" in result.output and "* int8: its float layers were chosen on the verification images" \
            in " ".join(result.output.split())


def test_an_unknown_precision_or_batch_profile_is_a_clear_error(run_dir, tmp_path):
    result = runner.invoke(app, ["export", str(run_dir / "model.keras"), "--out", str(tmp_path), "--precision", "fp8"])
    assert result.exit_code == 1 and "unknown precision fp8" in result.output
    result = runner.invoke(app, ["export", str(run_dir / "model.keras"), "--batch-profile", "8,4,64"])
    assert result.exit_code == 2 and "batch-profile" in result.output and "8/4/64" in result.output
    (tmp_path / "afile").write_text("")
    result = runner.invoke(app, ["export", str(run_dir / "model.keras"), "--out", str(tmp_path / "out"),
                                 "--triton", str(tmp_path / "afile" / "repo")], terminal_width=200)
    assert result.exit_code == 2 and "--triton" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # refused before the work (it failed after publishing, a traceback)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_engine_without_tensorrt_says_what_is_missing_before_any_work(run_dir, tmp_path):
    result = runner.invoke(app, ["export", str(run_dir / "model.keras"), "--out", str(tmp_path), "--engine"])
    assert result.exit_code == 1 and "TensorRT is not installed" in result.output and "medclf[gpu]" in result.output
    assert not (tmp_path / "model.onnx").exists()


def test_a_run_whose_images_have_moved_says_so_and_what_to_pass(run_dir, tmp_path):
    """Exporting on another machine, or after the dataset moved: the run's split lists files that are gone."""
    import shutil

    moved = tmp_path / "run"
    shutil.copytree(run_dir, moved)
    splits = json.loads((moved / "splits.json").read_text())
    for split in splits.values():
        split["paths"] = [f"/gone/data/{i}.jpeg" for i, _ in enumerate(split["paths"])]
    (moved / "splits.json").write_text(json.dumps(splits))
    result = runner.invoke(app, ["export", str(moved / "model.keras"), "--out", str(tmp_path / "out")],
                           terminal_width=200)
    assert result.exit_code == 1
    assert "lists its val images under /gone/data, and none of them is there any more" in result.output
    assert "pass --verify-data with real images" in result.output


def test_files_an_earlier_export_of_another_model_left_are_removed_and_said(run_dir, exported, tmp_path):
    """An INT8 file refused (or not asked for) this time must not be served beside the new model.onnx from an
    older model; an earlier export of this same model stays, verified against it."""
    import shutil

    import keras

    earlier, _, earlier_repo = exported  # FP32, FP16 and INT8 files of run_dir's model, and their Triton models
    same, other, repo = tmp_path / "same", tmp_path / "other", tmp_path / "triton"
    for out in (same, other):
        shutil.copytree(earlier, out)
    if not (other / "model.fp16.onnx").exists():  # refused for this tiny model: a file of it there all the same
        shutil.copyfile(earlier / "model.onnx", other / "model.fp16.onnx")
    left = sorted(p.name for p in other.glob("model.*.onnx"))
    shutil.copytree(earlier_repo, repo)
    (other / "model.plan").write_bytes(b"an engine built from the earlier model.onnx")  # as --engine leaves them
    shutil.copytree(repo / run_dir.name, repo / f"{run_dir.name}_tensorrt_fp32")
    retrained = tmp_path / "retrained" / run_dir.name  # the same run name: the same Triton model names
    shutil.copytree(run_dir, retrained)
    model = keras.models.load_model(retrained / "model.keras", compile=False)
    model.set_weights([w * 1.01 for w in model.get_weights()])  # another model of the same run: another hash
    model.save(retrained / "model.keras")
    for served in repo.glob("*/1/model.onnx"):  # the repository's models: this run folder's, trained before
        _moved_to(served, retrained)

    result = runner.invoke(app, ["export", str(retrained / "model.keras"), "--out", str(other), "--triton", str(repo),
                                 "--verify-images", "16", "--batch-profile", "1,4,8"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in other.glob("*.onnx")) == ["model.onnx"]
    assert not (other / "model.plan").exists()  # an engine is served only beside the file it was built from
    assert sorted(p.name for p in repo.iterdir()) == [run_dir.name]
    assert left and all(f"removed {other / name}: left by an earlier export" in result.output for name in left)
    assert "max_batch_size: 8" in (repo / run_dir.name / "config.pbtxt").read_text()  # the profile, without --engine

    result = runner.invoke(app, ["export", str(run_dir / "model.keras"), "--out", str(same), "--verify-images", "16"])
    assert result.exit_code == 0 and "removed" not in result.output
    assert sorted(p.name for p in same.glob("*.onnx")) == sorted(p.name for p in earlier.glob("*.onnx"))


def test_float_convolutions_asked_for_replace_the_search_and_verification_still_judges(run_dir, tmp_path):
    """A faster INT8 than the search's margin allows: the user names the step, verification decides."""
    result = runner.invoke(app, ["export", str(run_dir / "model.keras"), "--out", str(tmp_path), "--precision",
                                 "fp32,int8", "--verify-images", "16", "--float-convs", "int8=6"], terminal_width=160)
    entry = json.loads((tmp_path / "export_report.json").read_text())["precisions"]["int8"]
    assert entry["float_convs"] == 6 and [t["float_convs"] for t in entry["search"]] == [6]
    assert entry["searched_on"] == "none: 6 asked for (--float-convs)"
    assert result.exit_code == (0 if entry["passed"] else 1), result.output
    for arguments, status, reason in ((["--float-convs", "fp32=2"], 1, "not for fp32"),
                                      (["--float-convs", "fp16=2"], 1, "not for fp16"),  # fp16 not exported
                                      (["--float-convs", "int8=0"], 1, "at least its first one float"),
                                      (["--float-convs", "int8"], 2, "PRECISION=N")):
        refused = runner.invoke(app, ["export", str(run_dir / "model.keras"), "--out", str(tmp_path / "x"),
                                      "--precision", "fp32,int8", *arguments], terminal_width=200)
        assert refused.exit_code == status and reason in refused.output, refused.output


def test_the_default_export_folder_is_the_runs_own(run_dir, tmp_path, monkeypatch):
    """./exported was shared by every run exported from one folder: the second replaced the first's model."""
    import shutil

    run = shutil.copytree(run_dir, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export", str(run / "model.keras")])
    assert result.exit_code == 0, result.output
    assert (run / "exported" / "model.onnx").is_file() and not (tmp_path / "exported").exists()


def _moved_to(onnx_file, run_dir) -> None:
    """``onnx_file``'s card says it was exported from ``run_dir`` (as if that run folder had been trained there)."""
    import onnx

    from medclf.runtime.modelcard import SOURCE_KEY

    model = onnx.load(str(onnx_file))
    for prop in model.metadata_props:
        if prop.key == SOURCE_KEY:
            prop.value = json.dumps(json.loads(prop.value) | {"run_dir": str(run_dir)}, sort_keys=True)
    onnx.save(model, str(onnx_file))
