"""FP16 and INT8: the same contract as FP32, with the weights and maths each precision promises."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from medclf.export.fp16 import compensated_rounding, to_fp16
from medclf.export.input_moments import conv_patch_moments
from medclf.export.int8 import ImageCalibrationReader, Int8Quantizer, to_int8
from medclf.export.output_nodes import familiarity_nodes
from medclf.export.candidates import derive, judged_probabilities
from medclf.export.float_search import (ESTIMATE_MARGIN, FP16_FLOAT_STEPS, INT8_FLOAT_STEPS, chosen_try, cleared,
                                        pass_probability)
from medclf.export.held_out import HeldOut
from medclf.export.pipeline import _verify, model_card
from medclf.export.verification_images import verification_set
from medclf.export.report import computed_lines, export_table, search_lines
from medclf.export.verify import Calls, expected_flips, keras_probabilities
from medclf.runtime import Classifier, load_image
from medclf.runtime.cpu import VERIFIED_ON, this_cpu


def initializer_types(model: onnx.ModelProto, nodes: list[onnx.NodeProto] | None = None) -> set[int]:
    """The types of the weights (not scalars) that ``nodes`` (default: all) read."""
    read = {name for node in (model.graph.node if nodes is None else nodes) for name in node.input}
    return {init.data_type for init in model.graph.initializer if len(init.dims) > 1 and init.name in read}


def test_fp16_holds_float16_weights_and_keeps_uint8_in_float32_out(exported, tmp_path):
    fp32 = onnx.load(exported[1]["precisions"]["fp32"]["file"])
    fp16 = to_fp16(onnx.load(exported[1]["precisions"]["fp32"]["file"]))
    familiar = set(familiarity_nodes(fp16))
    network = [node for node in fp16.graph.node if node.name not in familiar]
    assert initializer_types(fp16, network) == {onnx.TensorProto.FLOAT16}
    # the unfamiliarity output's distances stay float32: float16 would overflow on the images it must flag
    assert initializer_types(fp16, [node for node in fp16.graph.node if node.name in familiar]) == {
        onnx.TensorProto.FLOAT}
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert all(output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for output in fp16.graph.output)
    weights = sum(init.ByteSize() for init in fp32.graph.initializer if init.name in
                  {name for node in network for name in node.input})
    assert fp16.ByteSize() < fp32.ByteSize() - 0.4 * weights
    casts = [node for node in network if node.op_type == "Cast"]
    assert len(casts) <= 3  # uint8 → float32 → float16 at the input, float16 → float32 at the output; no cascades
    # nor a round trip through float16 between the unfamiliarity's float32 nodes (its distances overflowed to inf)
    producers = {name: node for node in fp16.graph.node for name in node.output}
    assert not [node for node in fp16.graph.node if node.op_type == "Cast" and node.name in familiar
                and producers.get(node.input[0], node).name in familiar]


def test_fp16_probabilities_are_finite_and_within_a_few_hundredths(exported, tmp_path, blood_cell_images):
    """Rounding the weights to float16 alone moves these models' probabilities by up to ~0.03 (measured on the
    blood-cell model with float32 maths): the bound is loose, broken casts or overflow give NaN or ~0.5."""
    fp32_file = exported[1]["precisions"]["fp32"]["file"]
    fp32, fp16 = Classifier(fp32_file), tmp_path / "model.fp16.onnx"
    onnx.save(to_fp16(onnx.load(fp32_file)), str(fp16))
    images = np.stack([load_image(p, fp32.card.preprocess) for p in blood_cell_images])
    difference = np.abs(Classifier(fp16).predict(images) - fp32.predict(images))
    assert np.isfinite(difference).all() and difference.max() < 0.05
    assert exported[1]["precisions"]["fp16"]["max_abs_diff"] < 0.05


@pytest.fixture(scope="module")
def fp16_moments(exported, blood_cells):
    """``(FP32 model, its convolutions' patch moments, its card)``, the moments on 32 real training images."""
    fp32_file = exported[1]["precisions"]["fp32"]["file"]
    card = Classifier(fp32_file).card
    paths = [str(p) for c in sorted((blood_cells / "TRAIN").iterdir()) for p in sorted(c.iterdir())[:8]]
    fp32 = onnx.load(fp32_file)
    return fp32, conv_patch_moments(fp32, ImageCalibrationReader(paths, card.preprocess)), card


def test_fp16_weights_are_rounded_to_keep_each_convolutions_outputs(fp16_moments):
    """Rounded each to its nearest float16, weights and bias move every output; compensated, the file holds
    float16 values only and, by the calibration images' moments, the outputs move far less (measured: 0.03x
    the mean square)."""
    fp32, moments, _ = fp16_moments
    compensated = compensated_rounding(fp32, moments, skip=set())
    before = {init.name: numpy_helper.to_array(init) for init in fp32.graph.initializer}
    after = {init.name: numpy_helper.to_array(init) for init in compensated.graph.initializer}
    nearest_error = compensated_error = 0.0
    for old, new in zip((n for n in fp32.graph.node if n.op_type == "Conv"),
                        (n for n in compensated.graph.node if n.op_type == "Conv")):
        w, b, w16, b16 = before[old.input[1]], before[old.input[2]], after[new.input[1]], after[new.input[2]]
        assert np.array_equal(w16, w16.astype(np.float16).astype(np.float32))
        assert np.array_equal(b16, b16.astype(np.float16).astype(np.float32))
        per_group = len(w) // moments[old.output[0]].shape[0]
        def mean_square(weights, bias):
            change = np.concatenate([(bias - b)[:, None], (weights - w).reshape(len(w), -1)], axis=1)
            return sum(change[o] @ moments[old.output[0]][o // per_group] @ change[o] for o in range(len(w)))
        nearest_error += mean_square(w.astype(np.float16).astype(np.float32), b.astype(np.float16).astype(np.float32))
        compensated_error += mean_square(w16, b16)
    assert compensated_error < 0.1 * nearest_error


def test_compensated_fp16_moves_real_images_probabilities_less_than_nearest_rounding(fp16_moments, tmp_path,
                                                                                     blood_cell_images):
    """On test images the calibration never saw (measured: 0.09x nearest rounding's median change)."""
    fp32, moments, card = fp16_moments
    images = np.stack([load_image(p, card.preprocess) for p in blood_cell_images])
    reference = Classifier(_saved(fp32, tmp_path / "fp32.onnx")).predict(images)
    def change(model: onnx.ModelProto, name: str) -> float:
        return np.median(np.abs(Classifier(_saved(model, tmp_path / name)).predict(images) - reference))
    assert change(to_fp16(fp32, moments=moments), "compensated.onnx") < 0.25 * change(to_fp16(fp32), "nearest.onnx")


def _saved(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def _zero_points(model: onnx.ModelProto, tensor_type: int) -> list[np.ndarray]:
    return [numpy_helper.to_array(init) for init in model.graph.initializer
            if init.name.endswith("_zero_point") and init.data_type == tensor_type]


@pytest.fixture(scope="module")
def int8_flavours(exported, blood_cells) -> dict[str, onnx.ModelProto]:
    fp32_file = exported[1]["precisions"]["fp32"]["file"]
    card = Classifier(fp32_file).card
    paths = sorted(str(p) for p in (blood_cells / "TRAIN" / "NEUTROPHIL").iterdir())[:16]
    return {name: to_int8(fp32_file, ImageCalibrationReader(paths, card.preprocess, batch_size=8), symmetric=sym)
            for name, sym in (("onnxruntime", False), ("tensorrt", True))}


@pytest.mark.parametrize("flavour", ["onnxruntime", "tensorrt"])
def test_int8_is_explicit_per_channel_quantization_with_a_float_head(int8_flavours, flavour):
    model = int8_flavours[flavour]
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    weights = [init for init in model.graph.initializer
               if init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 4]
    assert len(weights) > 10  # convolution kernels stored as int8
    assert all((z == 0).all() for z in _zero_points(model, onnx.TensorProto.INT8))  # weights: symmetric
    per_channel = [node for node in model.graph.node if node.op_type == "DequantizeLinear"
                   and any(a.name == "axis" for a in node.attribute)]
    assert per_channel
    familiar = set(familiarity_nodes(model))  # the unfamiliarity output's MatMuls, float as well
    (head,) = [node for node in model.graph.node if node.op_type in ("MatMul", "Gemm") and node.name not in familiar]
    float_weights = {init.name for init in model.graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    assert head.input[1] in float_weights  # the classifier head keeps its float weights


@pytest.mark.parametrize("flavour", ["onnxruntime", "tensorrt"])
def test_int8_leaves_the_classifier_tail_float(int8_flavours, flavour):
    """Pooling, head and softmax: nothing after the last convolution's activation is quantized, so the logits and
    the probabilities are not put on a 256-level grid."""
    familiar = set(familiarity_nodes(int8_flavours[flavour]))
    nodes = [node for node in int8_flavours[flavour].graph.node if node.name not in familiar]
    pool = next(i for i, node in enumerate(nodes) if node.op_type == "GlobalAveragePool")
    tail = [node.op_type for node in nodes[pool:]]
    assert "Gemm" in tail and "QuantizeLinear" not in tail and "DequantizeLinear" not in tail
    assert nodes[-1].op_type == "Softmax" and nodes[-1].output[0] == "probabilities"


def test_int8_for_onnxruntime_sums_its_levels_and_for_tensorrt_pools_them_in_float(int8_flavours):
    """TensorRT's parser takes no MatMulInteger; onnxruntime's flavour reads no level through a dequantization."""
    for flavour, model in int8_flavours.items():
        producers = {name: node for node in model.graph.node for name in node.output}
        familiar = set(familiarity_nodes(model))
        pools = [node for node in model.graph.node if node.op_type == "GlobalAveragePool" and node.name in familiar]
        dequantized = [pool for pool in pools if producers.get(pool.input[0], pool).op_type == "DequantizeLinear"]
        sums = [node for node in model.graph.node if node.op_type == "MatMulInteger"]
        if flavour == "onnxruntime":
            assert sums and not dequantized, flavour
        else:
            assert dequantized and not sums, flavour


def test_int8_keeps_its_float_prefix_whole_residual_adds_included(blood_cells):
    """An Add between float convolutions used to be quantized: the residual stream rounded to 256 levels where
    nothing around it ran in int8 (a 28-px chest model: 2.3% flips with 9 float convolutions, 0.4% without)."""
    from medclf.runtime import DEFAULT_MODEL

    paths = sorted(str(p) for p in (blood_cells / "TRAIN" / "NEUTROPHIL").iterdir())[:8]
    model = to_int8(DEFAULT_MODEL, ImageCalibrationReader(paths, Classifier().card.preprocess), float_convs=12)
    nodes = list(model.graph.node)
    made_by = {output: node.op_type for node in nodes for output in node.output}
    twelfth = [i for i, node in enumerate(nodes) if node.op_type == "Conv"][11]
    prefix = [node for node in nodes[:twelfth + 1] if node.op_type in ("Conv", "Add")]
    assert [node.op_type for node in prefix].count("Add") == 2  # the input's normalisation, block 2's residual
    assert all(made_by.get(name) != "DequantizeLinear" for node in prefix for name in node.input)
    later = [node for node in nodes[twelfth + 1:] if node.op_type == "Conv"]
    assert all(made_by.get(node.input[0]) == "DequantizeLinear" for node in later[1:-1])  # the rest: int8


def test_the_runtime_cached_optimized_graph_of_fp16_and_int8_files_answers_the_same(exported, int8_flavours,
                                                                                     tmp_path, monkeypatch,
                                                                                     blood_cell_images):
    """``medclf-run`` starts from onnxruntime's saved optimized graph (QDQ fused into int8 kernels, FP16 casts
    placed): the same probabilities as a session that optimizes the file itself."""
    monkeypatch.setenv("MEDCLF_CACHE", str(tmp_path / "cache"))
    fp32_file = exported[1]["precisions"]["fp32"]["file"]
    fp16, int8 = tmp_path / "model.fp16.onnx", tmp_path / "model.int8.onnx"
    onnx.save(to_fp16(onnx.load(fp32_file)), str(fp16))
    onnx.save(int8_flavours["onnxruntime"], str(int8))
    for path in (fp16, int8):
        plain = Classifier(path)
        images = np.stack([load_image(p, plain.card.preprocess) for p in blood_cell_images])
        for _ in range(2):  # saves the graph, then starts from it
            np.testing.assert_array_equal(Classifier(path, reuse_optimized=True).predict(images), plain.predict(images))
    assert len(list((tmp_path / "cache" / "ort-optimized").iterdir())) == 2


def test_an_int8_file_carries_the_cpu_it_was_made_and_verified_on(exported, blood_cells, tmp_path):
    fp32 = tmp_path / "model.onnx"
    shutil.copy(exported[1]["precisions"]["fp32"]["file"], fp32)
    card = Classifier(fp32).card
    paths = sorted(str(p) for p in (blood_cells / "TRAIN" / "LYMPHOCYTE").iterdir())[:8]
    quantizer = Int8Quantizer(ImageCalibrationReader(paths, card.preprocess))
    int8 = Classifier(derive("int8", fp32, card, {"int8": quantizer})).card
    assert int8.precision == "int8" and int8.metrics[VERIFIED_ON] == this_cpu()
    assert VERIFIED_ON not in card.metrics  # the FP32 file's maths do not depend on the CPU's int8 instructions


def test_int8_for_onnxruntime_has_uint8_activations_and_for_tensorrt_symmetric_int8_ones(int8_flavours):
    """U8S8 is what x86 CPUs run fastest; TensorRT reads only int8 QDQ with zero point 0. (MobileNet's
    activations quantized here all follow a ReLU, so even the uint8 ones have their zero at 0.)"""
    assert len(_zero_points(int8_flavours["onnxruntime"], onnx.TensorProto.UINT8)) > 10
    assert not _zero_points(int8_flavours["tensorrt"], onnx.TensorProto.UINT8)
    assert all((z == 0).all() for z in _zero_points(int8_flavours["tensorrt"], onnx.TensorProto.INT8))


def test_the_calibration_reader_feeds_real_preprocessed_batches_and_skips_bad_files(blood_cell_images, tmp_path):
    card = Classifier().card
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    reader = ImageCalibrationReader([*blood_cell_images[:3], bad, blood_cell_images[3]], card.preprocess, batch_size=2)
    batches = []
    while (batch := reader.get_next()) is not None:
        batches.append(batch["image"])
    assert [len(b) for b in batches] == [2, 1, 1]
    assert batches[0].dtype == np.uint8 and batches[0].shape[1:] == card.preprocess.shape
    np.testing.assert_array_equal(batches[0][0], load_image(blood_cell_images[0], card.preprocess))
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["image"], batches[0])


def test_int8_keeps_more_leading_convolutions_float_until_verification_should_pass(exported):
    entry = exported[1]["precisions"]["int8"]
    tries = entry["search"]
    assert [t["float_convs"] for t in tries] == list(INT8_FLOAT_STEPS[:len(tries)])
    assert not any(t["cleared"] for t in tries[:-1])  # it stops at the first step that clears
    on_verification_images = "verification images" in entry["searched_on"]  # 96 held out: too few for both
    for t in tries:
        assert t["pass_probability"] == pass_probability("int8", ESTIMATE_MARGIN * t["expected_flips"],
                                                         exported[1]["images"])  # twice: it reads low
        assert t["cleared"] == cleared(t["passed"], t["pass_probability"], on_verification_images)
    assert entry["float_convs"] == chosen_try(tries, on_verification_images)["float_convs"]
    assert "images" in entry["searched_on"]
    assert entry["search_counted"] is on_verification_images
    assert entry["method"]["bias_correction"] and entry["method"]["calibration_images"] > 0


def test_every_search_try_is_timed_and_the_trade_is_printed_one_line_per_precision(exported):
    """What keeping fewer layers float would buy: each try's images/s beside its chance of passing."""
    for name in ("fp16", "int8"):
        tries = exported[1]["precisions"][name]["search"]
        timed = [t.get("images_per_s_batch32", 0) > 0 for t in tries]
        assert all(timed) if len(tries) > 1 else not any(timed)  # one try: the report's own timing is its speed
    report = {"precisions": {"fp32": {}, "int8": {"float_convs": 12, "search": [
        {"float_convs": 3, "images_per_s_batch32": 1740.2, "pass_probability": 0.42},
        {"float_convs": 12, "images_per_s_batch32": 880.0, "pass_probability": 0.95}]}}}
    assert search_lines(report) == ["int8 search, by leading convolutions kept float32 (images/s at batch 32, "
                                    "chance to pass verification): 3: 1,740/s 42% · 12: 880/s 95% (kept)"]
    counted = {"precisions": {"int8": {"float_convs": 12, "search_counted": True, "search": [
        {"float_convs": 3, "images_per_s_batch32": 1740.2, "pass_probability": 0.42, "agreement": 0.9857},
        {"float_convs": 12, "images_per_s_batch32": 880.0, "pass_probability": 0.95, "agreement": 0.9892}]}}}
    assert search_lines(counted) == [  # too few images held out for both: the count there is the verdict
        "int8 search, by leading convolutions kept float32 (images/s at batch 32, agreement on the verification "
        "images): 3: 1,740/s 98.5% · 12: 880/s 98.9% (kept)"]
    report["precisions"]["int8"]["search"] = report["precisions"]["int8"]["search"][:1]  # one try: no trade
    assert search_lines(report) == []


def test_the_table_says_which_files_were_published_and_which_verification_refused(exported):
    """A refusal is verification working (the file is not published under its name), not a crash."""
    from rich.console import Console

    report = exported[1]
    console = Console(record=True, width=200)
    console.print(export_table(report))
    rows = {line.split()[0]: line.split()[-1] for line in console.export_text().splitlines()
            if line.split() and line.split()[0] in report["precisions"]}
    assert rows == {name: "ok" if entry["passed"] else "refused" for name, entry in report["precisions"].items()}


def test_an_engine_tensorrt_could_not_build_is_a_refused_row_not_a_crash(exported):
    """Its entry has no agreement (nothing ran): the table raised KeyError before saying why it was not written."""
    import copy

    from rich.console import Console

    report = copy.deepcopy(exported[1])
    report["precisions"]["fp32"]["tensorrt"] = {"file": "model.plan", "onnx": "model.onnx", "profile": [1, 8, 32],
                                                "passed": False, "failures": ["TensorRT could not build it"]}
    console = Console(record=True, width=200)
    console.print(export_table(report))
    row = next(line for line in console.export_text().splitlines() if line.startswith("fp32 TensorRT"))
    assert row.split()[-1] == "refused" and "—" in row


def test_the_calibration_reader_decodes_once_and_replays_after_rewind(blood_cell_images, tmp_path):
    card = Classifier().card
    copy = tmp_path / "cell.jpeg"
    copy.write_bytes(blood_cell_images[0].read_bytes())
    reader = ImageCalibrationReader([copy, *blood_cell_images[1:3]], card.preprocess, batch_size=2)
    first = [reader.get_next() for _ in range(3)]
    assert first[-1] is None
    copy.unlink()  # a second pass must not go back to the files
    reader.rewind()
    second = [reader.get_next() for _ in range(3)]
    assert second[-1] is None and all(np.array_equal(a["image"], b["image"]) for a, b in zip(first[:2], second[:2]))


def test_fp16_keeps_its_first_convolutions_float32_when_asked(exported):
    fp32 = onnx.load(exported[1]["precisions"]["fp32"]["file"])
    weights = {init.name: init.data_type for init in to_fp16(fp32, float_convs=3).graph.initializer}
    convs = [node for node in to_fp16(fp32, float_convs=3).graph.node if node.op_type == "Conv"]
    assert [weights.get(conv.input[1]) for conv in convs[:4]] == [onnx.TensorProto.FLOAT] * 3 + [
        onnx.TensorProto.FLOAT16]


def test_fp16_is_float16_throughout_unless_asked_and_its_one_try_is_recorded(exported):
    entry = exported[1]["precisions"]["fp16"]
    assert FP16_FLOAT_STEPS == (0,) and entry["float_convs"] == 0
    [one] = entry["search"]
    on_verification_images = "verification images" in entry["searched_on"]
    assert one["float_convs"] == 0 and one["cleared"] == cleared(one["passed"], one["pass_probability"],
                                                                 on_verification_images)
    assert "images_per_s_batch32" not in one and "images" in entry["searched_on"]
    assert "compensated" in entry["method"]["weights"] and entry["method"]["calibration_images"] > 0
    assert entry["method"]["damping"] > 0 and entry["method"]["patch_positions_per_image"] > 0


def test_expected_flips_is_how_often_one_images_top_two_gap_is_below_anothers_error():
    reference = np.array([[0.50, 0.49, 0.01], [0.9, 0.07, 0.03], [0.6, 0.3, 0.1], [0.40, 0.35, 0.25]])
    # gaps 0.01, 0.83, 0.3, 0.05; a candidate moving every gap by 0.02 beats one gap in four
    moved = reference + np.array([[-0.01, 0.01, 0.0]] * 4)
    assert expected_flips(reference, reference, moved) == pytest.approx(0.25)
    assert expected_flips(reference, reference, reference) == 0.0
    assert expected_flips(reference, reference[:1], moved[:1] * 0 + [[0.0, 1.0, 0.0]]) == pytest.approx(1.0)


def test_fp16_is_verified_as_a_gpu_computes_it_with_float16_activations(run_dir, exported, tmp_path):
    """onnxruntime's CPU computes an FP16 file in float32 between casts; verification judges the file with
    float16 activations, and says so in the report."""
    fp32_file = exported[1]["precisions"]["fp32"]["file"]
    candidate = tmp_path / "model.fp16.onnx"
    proto = to_fp16(onnx.load(fp32_file))
    onnx.helper.set_model_props(proto, Classifier(fp32_file).card.to_metadata())
    onnx.save(proto, str(candidate))
    card = model_card(run_dir / "model.keras")
    images, labels = verification_set(run_dir / "model.keras", card)
    keras_p = keras_probabilities(keras.models.load_model(run_dir / "model.keras", compile=False), images)
    entry = _verify(candidate, HeldOut(images, labels, keras_p, Calls(card.labels, card.decision)), "fp16")
    as_gpus_compute = judged_probabilities(candidate, images, "fp16")
    on_this_cpu = Classifier(candidate).predict(images)
    assert "float16 activations" in entry["computed_as"] == exported[1]["precisions"]["fp16"]["computed_as"]
    assert entry["max_abs_diff"] == pytest.approx(np.abs(as_gpus_compute - keras_p).max(), rel=1e-6)
    assert entry["on_this_cpu"]["max_abs_diff"] == pytest.approx(np.abs(on_this_cpu - keras_p).max(), rel=1e-6)
    assert not np.allclose(as_gpus_compute, on_this_cpu, rtol=0, atol=1e-6)
    assert computed_lines({"precisions": {"fp16": entry}}) == [
        f"fp16 verified with float16 activations, as a GPU computes the file; onnxruntime on this CPU computes it "
        f"in float32 between casts: agreement {entry['on_this_cpu']['agreement']:.1%}, max |Δp| "
        f"{entry['on_this_cpu']['max_abs_diff']:.1g}"]
    assert computed_lines({"precisions": {"fp32": {}}}) == []
