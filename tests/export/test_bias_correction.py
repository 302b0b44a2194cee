"""Bias correction: each quantized convolution's bias absorbs the mean error its int8 weights make."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from medclf.export.bias_correction import conv_input_means, correct_biases, input_means, int8_weights
from medclf.export.int8 import ImageCalibrationReader, to_int8
from medclf.runtime import Classifier
from tests.onnx_graphs import ArrayReader


def grouped_conv_without_bias(weight: np.ndarray) -> onnx.ModelProto:
    """x [N, 4, 6, 6] → Conv(2 groups, 3x3, no padding, no bias) → y [N, 6, 4, 4]."""
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", group=2)
    graph = helper.make_graph([conv], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def with_int8_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    rounded = onnx.ModelProto()
    rounded.CopyFrom(model)
    for init in rounded.graph.initializer:
        if len(init.dims) == 4:
            init.CopyFrom(numpy_helper.from_array(int8_weights(numpy_helper.to_array(init)), init.name))
    return rounded


def test_the_corrected_bias_gives_int8_weights_the_float_outputs_mean():
    """Rounded weights plus corrected bias have, per output channel, the float convolution's mean output.
    A convolution without a bias gets one."""
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 1, (6, 2, 3, 3)).astype(np.float32) * rng.uniform(0.01, 1, (6, 1, 1, 1)).astype(np.float32)
    # like ReLU6 outputs; flat over each image, so that every kernel position sees the mean (else only nearly)
    reader = ArrayReader([np.broadcast_to(rng.uniform(0, 6, (8, 4, 1, 1)), (8, 4, 6, 6)).astype(np.float32)
                          for _ in range(3)])
    model = grouped_conv_without_bias(weight)
    corrected = correct_biases(model, conv_input_means(model, reader), skip=set())
    (conv,) = corrected.graph.node
    assert len(conv.input) == 3
    float_mean = input_means(model, ["y"], reader)["y"]
    rounded_mean = input_means(with_int8_weights(model), ["y"], reader)["y"]
    corrected_mean = input_means(with_int8_weights(corrected), ["y"], reader)["y"]
    assert np.abs(rounded_mean - float_mean).max() > 1e-3  # the error being corrected is real
    np.testing.assert_allclose(corrected_mean, float_mean, atol=1e-5)


def test_a_bias_two_convolutions_share_is_corrected_for_each_and_the_old_one_goes():
    rng = np.random.default_rng(1)
    weights = [rng.normal(0, 0.3, (3, 4, 3, 3)).astype(np.float32) for _ in range(2)]
    nodes = [helper.make_node("Conv", ["x", f"w{i}", "b"], [f"y{i}"], name=f"conv{i}") for i in range(2)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(f"y{i}", onnx.TensorProto.FLOAT, None) for i in range(2)],
                              [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)]
                              + [numpy_helper.from_array(np.full(3, 0.5, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    reader = ArrayReader([np.broadcast_to(rng.uniform(0, 6, (8, 4, 1, 1)), (8, 4, 6, 6)).astype(np.float32)])
    corrected = correct_biases(model, conv_input_means(model, reader), skip=set())
    assert "b" not in {init.name for init in corrected.graph.initializer}
    assert len({node.input[2] for node in corrected.graph.node}) == 2
    for output in ("y0", "y1"):
        np.testing.assert_allclose(input_means(with_int8_weights(corrected), [output], reader)[output],
                                   input_means(model, [output], reader)[output], atol=1e-5)


def test_convolutions_that_stay_float_keep_their_bias(exported):
    model = onnx.load(exported[1]["precisions"]["fp32"]["file"])
    first = next(node for node in model.graph.node if node.op_type == "Conv")
    card = Classifier(exported[1]["precisions"]["fp32"]["file"]).card
    reader = ArrayReader([np.zeros((2, *card.preprocess.shape), np.uint8)], "image")
    corrected = correct_biases(model, conv_input_means(model, reader), skip={first.name})
    biases = {init.name: numpy_helper.to_array(init) for init in corrected.graph.initializer}
    original = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    pairs = [(before, after) for before, after in zip(model.graph.node, corrected.graph.node)
             if before.op_type == "Conv"]
    assert pairs[0][1].input[2] == first.input[2]
    assert np.array_equal(biases[first.input[2]], original[first.input[2]])
    changed = [after for before, after in pairs[1:]
               if not np.array_equal(biases[after.input[2]], original[before.input[2]])]
    assert len(changed) > 10


@pytest.fixture(scope="module")
def quantized(exported, blood_cells, tmp_path_factory) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(FP32, its INT8 for onnxruntime) of the shared tiny model, calibrated on 16 real smears."""
    fp32 = tmp_path_factory.mktemp("bc") / "model.onnx"
    shutil.copy(exported[1]["precisions"]["fp32"]["file"], fp32)
    paths = sorted(str(p) for p in (blood_cells / "TRAIN" / "EOSINOPHIL").iterdir())[:16]
    reader = ImageCalibrationReader(paths, Classifier(fp32).card.preprocess, batch_size=8)
    return onnx.load(str(fp32)), to_int8(fp32, reader)


def test_the_weights_it_corrects_for_are_the_ones_the_quantizer_writes(quantized):
    """Correction assumes the quantizer's rounding (symmetric int8 per output channel); this holds it to the
    int8 kernels and scales actually in the file."""
    fp32, int8 = quantized
    floats = {init.name: numpy_helper.to_array(init) for init in fp32.graph.initializer}
    stored = {init.name: numpy_helper.to_array(init) for init in int8.graph.initializer}
    kernels = [node for node in int8.graph.node if node.op_type == "DequantizeLinear"
               and stored.get(node.input[0], np.zeros(0)).ndim == 4]
    assert len(kernels) > 10
    for node in kernels:
        scale = stored[node.input[1]].reshape(-1, 1, 1, 1)
        original = floats[node.input[0].removesuffix("_quantized")]
        # atol: dead channels (|w| ~ 1e-9) may come out 0 either way; a live one's quantum is ~1e-4 or more
        np.testing.assert_allclose(stored[node.input[0]] * scale, int8_weights(original), rtol=1e-6, atol=1e-7)
