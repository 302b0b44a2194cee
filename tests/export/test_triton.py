"""``--triton REPO``: a model repository Triton Inference Server accepts, describing the model's real tensors."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from medclf.runtime import Classifier, load_image
from medclf.runtime.decision import decide

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] (Triton's ModelConfig schema) is not installed")


def config_of(model_dir: Path):
    """Parse config.pbtxt strictly against Triton's own ModelConfig schema: unknown fields are errors."""
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_every_published_file_becomes_a_triton_model(exported, run_dir):
    _, report, repo = exported
    published = {precision: entry["file"] for precision, entry in report["precisions"].items() if entry["passed"]}
    names = [run_dir.name + ("" if precision == "fp32" else f"_{precision}") for precision in published]
    assert report["triton"] == [str(repo / name) for name in names]
    for model_dir, onnx_file in zip(map(Path, report["triton"]), published.values()):
        assert filecmp.cmp(model_dir / "1" / "model.onnx", onnx_file, shallow=False)
        assert config_of(model_dir).name == model_dir.name


def test_the_config_matches_the_onnx_files_real_input_and_output(exported):
    _, report, _ = exported
    model_dir = Path(report["triton"][0])
    config, model = config_of(model_dir), onnx.load(str(model_dir / "1" / "model.onnx"))
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    assert config.HasField("dynamic_batching")
    (image,), (probabilities, unfamiliarity) = config.input, config.output
    assert (image.name, image.data_type, list(image.dims)) == ("image", model_config_pb2.TYPE_UINT8, [64, 64, 3])
    assert image.format == model_config_pb2.ModelInput.FORMAT_NHWC
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]] == list(image.dims)
    assert (probabilities.name, probabilities.data_type, list(probabilities.dims)) == (
        "probabilities", model_config_pb2.TYPE_FP32, [4])
    assert probabilities.name == model.graph.output[0].name
    assert (unfamiliarity.name, unfamiliarity.data_type, list(unfamiliarity.dims), unfamiliarity.label_filename) == (
        "unfamiliarity", model_config_pb2.TYPE_FP32, [1], "")  # [batch, 1]: no reshape of a batch-only axis


def test_labels_and_each_files_own_model_card_travel_with_the_model(exported, run_dir):
    _, report, _ = exported
    published = [precision for precision, entry in report["precisions"].items() if entry["passed"]]
    assert len(published) == len(report["triton"])
    for precision, model_dir in zip(published, map(Path, report["triton"])):
        config = config_of(model_dir)
        labels = (model_dir / config.output[0].label_filename).read_text().splitlines()
        assert labels == ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]
        assert config.parameters["medclf.precision"].string_value == precision  # not the FP32 file's card
        assert '"height": 64' in config.parameters["medclf.preprocess"].string_value


def test_a_binary_model_also_answers_with_its_threshold_call_for_the_classification_extension(binary_export,
                                                                                              cataract):
    _, out, report, _ = binary_export
    published = {precision: entry["file"] for precision, entry in report["precisions"].items() if entry["passed"]}
    paths = sorted(str(p) for folder in ("cataract", "normal") for p in (cataract / folder).iterdir())
    for (precision, file), model_dir in zip(published.items(), map(Path, report["triton"])):
        config, verified = config_of(model_dir), Classifier(file)
        assert [(o.name, o.label_filename) for o in config.output] == [("probabilities", "labels.txt"),
                                                                         ("calls", "labels.txt")]
        assert "threshold" in config.parameters["medclf.outputs"].string_value
        images = np.stack([load_image(path, verified.card.preprocess) for path in paths])
        session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        probabilities, calls = session.run(["probabilities", "calls"], {"image": images})
        np.testing.assert_allclose(probabilities, verified.predict(images), atol=1e-6)
        served = decide(probabilities, verified.labels, verified.card.decision)
        assert (calls.argmax(axis=1) == served).all() and (served != probabilities.argmax(axis=1)).any()
        assert calls.min() >= 0 and calls.max() <= 1 and np.allclose(calls.sum(axis=1), 1)


@pytest.mark.parametrize("positive", ["PNEUMONIA", "NORMAL"])
def test_the_threshold_call_holds_at_the_threshold_itself_and_a_float32_step_either_side(positive):
    """At p = threshold (and one float32 step over) the two entries tied at one half, so the extension had no
    call to report; a threshold stored as the float32 below it called probabilities the runtime does not."""
    from medclf.export.triton import with_calls
    from medclf.runtime import ModelCard, Preprocess
    from medclf.runtime.decision import Decision

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["probabilities"])], "p",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2])],
        [onnx.helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["N", 2])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    labels = ("NORMAL", "PNEUMONIA")
    for threshold in (0.3, 0.1, 0.013, 0.62, 0.77):
        card = ModelCard(labels, Preprocess(8, 8), decision=Decision(positive, threshold))
        session = ort.InferenceSession(with_calls(model, card).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        t = np.float32(threshold)
        finding = np.array([np.nextafter(t, np.float32(0)), t, np.nextafter(t, np.float32(1))], np.float32)
        k = labels.index(positive)
        probabilities = np.zeros((3, 2), np.float32)
        probabilities[:, k], probabilities[:, 1 - k] = finding, 1 - finding
        calls = session.run(["calls"], {"x": probabilities})[0]
        assert (calls.argmax(axis=1) == decide(probabilities, labels, card.decision)).all(), (threshold, calls)
        assert (calls[:, 0] != calls[:, 1]).all()


def test_a_batch_shaped_as_the_config_says_runs_on_the_repositorys_model(exported, blood_cell_images):
    _, report, _ = exported
    model_dir = Path(report["triton"][0])
    config = config_of(model_dir)
    batch = np.zeros((2, *config.input[0].dims), np.uint8)
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run([output.name for output in config.output], {config.input[0].name: batch})
    assert [array.shape for array in outputs] == [(2, *output.dims) for output in config.output]


def test_writing_again_replaces_the_model_whole(exported, tmp_path):
    from medclf.export.triton import write_model

    out, report, _ = exported
    onnx_file = report["precisions"]["fp32"]["file"]
    first = write_model(tmp_path, "m", onnx_file, onnx_file, max_batch_size=8)
    (first / "1" / "stale.txt").write_text("left over")
    second = write_model(tmp_path, "m", onnx_file, onnx_file, max_batch_size=16)
    assert config_of(second).max_batch_size == 16 and not (second / "1" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    with pytest.raises(ValueError, match="Triton model name"):
        write_model(tmp_path, "bad name", onnx_file, onnx_file)


def test_a_model_replaced_is_never_absent_from_the_repository(exported, tmp_path, monkeypatch):
    """A Triton server polling the repository between two renames found no model and unloaded it: on Linux the
    old and the new folder are exchanged in one step."""
    import os

    from medclf.export.triton import write_model

    onnx_file = exported[1]["precisions"]["fp32"]["file"]
    write_model(tmp_path, "m", onnx_file, onnx_file, max_batch_size=8)
    renamed = os.replace

    def present_throughout(source, destination):
        assert (tmp_path / "m").exists(), "the model folder was absent while it was replaced"
        renamed(source, destination)

    monkeypatch.setattr(os, "replace", present_throughout)
    assert config_of(write_model(tmp_path, "m", onnx_file, onnx_file, max_batch_size=16)).max_batch_size == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_model_is_written_outside_the_repository_a_server_polls(exported, tmp_path, monkeypatch):
    """Triton polling the repository takes every folder in it for a model: the half-written one is staged beside
    the repository and swapped in whole."""
    from medclf.export import triton

    onnx_file = exported[1]["precisions"]["fp32"]["file"]
    repo = tmp_path / "repo"
    swap_in = triton._swap_in
    seen = []

    def looking_first(staged, final):
        seen.append(sorted(p.name for p in repo.iterdir()))
        swap_in(staged, final)

    monkeypatch.setattr(triton, "_swap_in", looking_first)
    triton.write_model(repo, "m", onnx_file, onnx_file)
    triton.write_model(repo, "m", onnx_file, onnx_file)
    assert seen == [[], ["m"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"] and sorted(p.name for p in repo.iterdir()) == ["m"]


def test_a_model_another_run_folder_of_the_same_name_serves_is_not_replaced(exported, run_dir, tmp_path):
    """Two projects' runs/latest are both served as "latest": the second export replaced the first project's
    model without a word. Refused before any work; the same run folder, trained again, replaces its own."""
    from medclf.export import pipeline

    repo = exported[2]
    other = tmp_path / "project_b" / run_dir.name / "model.keras"
    other.parent.mkdir(parents=True)
    other.write_bytes((run_dir / "model.keras").read_bytes())
    with pytest.raises(ValueError, match=rf"--triton {repo}: its model {run_dir.name} serves the model of "
                                         rf"{run_dir}, which this export of {other.parent} would replace"):
        pipeline.export_run(other, tmp_path / "out", triton=repo)
    assert not (tmp_path / "out").exists()
    assert pipeline._served_from_another_run(repo, run_dir / "model.keras") is None


def test_an_engine_for_triton_must_take_a_request_alone(run_dir, tmp_path):
    """Triton passes a request on alone when no other waits, and a TensorRT engine whose profile starts above 1
    cannot run it: refused before any work (found on no GPU: the check comes before TensorRT is looked for)."""
    from medclf.export import pipeline
    from medclf.runtime.tensorrt_engine import BatchProfile

    with pytest.raises(ValueError, match="Triton sends a request alone .* give MIN 1"):
        pipeline.export_run(run_dir / "model.keras", tmp_path / "out", engine=True, profile=BatchProfile(4, 16, 64),
                            triton=tmp_path / "repo")
    assert not (tmp_path / "out").exists() and not (tmp_path / "repo").exists()


def test_a_run_named_as_this_ones_int8_keeps_its_triton_model(exported, run_dir, tmp_path):
    """runs/brk_int8 serves its own model as REPO/brk_int8; exporting runs/brk (FP32 alone) removed it as an
    earlier INT8 file of brk's, "left by an earlier export"."""
    import json

    from medclf.export import pipeline
    from medclf.runtime.modelcard import ModelCard

    fp32 = exported[1]["precisions"]["fp32"]
    other = onnx.load(fp32["file"])
    for prop in other.metadata_props:
        if prop.key == "medclf.source":
            source = json.loads(prop.value)
            prop.value = json.dumps(source | {"run_dir": str(tmp_path / f"{run_dir.name}_int8"),
                                              "keras_sha256": "another model"})
    (tmp_path / "repo" / f"{run_dir.name}_int8" / "1").mkdir(parents=True)
    onnx.save(other, str(tmp_path / "repo" / f"{run_dir.name}_int8" / "1" / "model.onnx"))
    report = {"precisions": {"fp32": fp32}, "removed": []}
    card = ModelCard.from_proto(onnx.load(fp32["file"]))
    pipeline._triton(tmp_path / "repo", run_dir.name, report, card, 64)
    assert (tmp_path / "repo" / f"{run_dir.name}_int8" / "1" / "model.onnx").is_file() and report["removed"] == []


def test_a_label_holding_a_line_break_is_refused_for_labels_txt():
    """Triton reads labels.txt a line per class: "a\\nb" named every class after it wrongly (a model trained
    before such names were refused)."""
    from medclf.export.triton import one_line_each

    assert one_line_each(("NORMAL", "mass [benign]")) == ("NORMAL", "mass [benign]")
    with pytest.raises(ValueError, match=r"class 'a\\nb' holds a line break"):
        one_line_each(("NORMAL", "a\nb"))
