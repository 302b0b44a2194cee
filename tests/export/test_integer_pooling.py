"""INT8 files pool the familiarity levels in integers, from the quantized maps, and get what float pooling got."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from medclf.export.integer_pooling import pool_levels_in_integers
from medclf.runtime.modelcard import FAMILIARITY_NAME, OUTPUT_NAME


def quantized_level(element: int, zero_point: int, channels=5, height=3, width=7) -> onnx.ModelProto:
    """``x`` (quantized, NCHW) → DequantizeLinear → GlobalAveragePool → unfamiliarity, the dequantized map also
    feeding the other output, as a QDQ file's next convolution reads it."""
    numpy_type = onnx.helper.tensor_dtype_to_np_dtype(element)
    nodes = [helper.make_node("DequantizeLinear", ["x", "scale", "zero_point"], ["map"], "dequantize"),
             helper.make_node("GlobalAveragePool", ["map"], ["pooled"], "level_pool"),
             helper.make_node("Flatten", ["pooled"], [FAMILIARITY_NAME], "level_flatten"),
             helper.make_node("ReduceMax", ["map"], [OUTPUT_NAME], "other_reader", axes=[2, 3], keepdims=0)]
    constants = [numpy_helper.from_array(np.float32(0.047), "scale"),
                 numpy_helper.from_array(np.array(zero_point, numpy_type), "zero_point")]
    graph = helper.make_graph(
        nodes, "level", [helper.make_tensor_value_info("x", element, ["N", channels, height, width])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", channels])
         for name in (OUTPUT_NAME, FAMILIARITY_NAME)], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME, FAMILIARITY_NAME], {"x": x})


@pytest.mark.parametrize("element, zero_point", [(TensorProto.UINT8, 3), (TensorProto.INT8, -2)], ids=["uint8", "int8"])
def test_a_levels_mean_is_the_sum_of_its_quantized_map_zero_point_and_all(element, zero_point):
    model = quantized_level(element, zero_point)
    info = np.iinfo(onnx.helper.tensor_dtype_to_np_dtype(element))
    x = np.random.default_rng(0).integers(info.min, info.max, (4, 5, 3, 7), endpoint=True).astype(info.dtype)
    pooled = pool_levels_in_integers(model)
    (_, floats), (_, integers) = run(model, x), run(pooled, x)
    expected = 0.047 * (x.astype(np.float64) - zero_point).mean(axis=(2, 3))
    np.testing.assert_allclose(integers, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(integers, floats, rtol=1e-5, atol=1e-6)


def test_the_map_is_summed_channels_last_and_its_dequantization_stays_for_its_other_reader():
    pooled = pool_levels_in_integers(quantized_level(TensorProto.UINT8, 0))
    ops = {node.name: node for node in pooled.graph.node}
    assert "dequantize" in ops and "other_reader" in ops  # the model's own path is untouched
    assert not any(node.op_type == "GlobalAveragePool" for node in pooled.graph.node)
    (transpose,) = [node for node in pooled.graph.node if node.op_type == "Transpose"]
    assert transpose.input == ["x"] and list(transpose.attribute[0].ints) == [0, 2, 3, 1]
    assert [node.op_type for node in pooled.graph.node].count("MatMulInteger") == 1


def test_a_level_with_float_input_or_no_static_size_keeps_its_float_pooling():
    unsized = quantized_level(TensorProto.UINT8, 0)
    unsized.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    assert pool_levels_in_integers(unsized).graph.node == unsized.graph.node

