"""Which nodes the INT8 file keeps float: counted along each backbone, not by their place in the file."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from medclf.export.int8 import _float_nodes


def two_backbones() -> onnx.ModelProto:
    """Two branches of three convolutions side by side, the file listing all of a's nodes before b's (as
    tf2onnx writes ``two_backbones``), each pooled, concatenated, then a head."""
    weights = [numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w"),
               numpy_helper.from_array(np.ones((6, 2), np.float32), "head_w")]
    nodes = [helper.make_node("Mul", ["image", "image"], ["x"], name="normalize")]
    for branch in "ab":
        before = "x"
        for k in range(1, 4):
            nodes += [helper.make_node("Conv", [before, "w"], [f"{branch}{k}"], name=f"{branch}_conv{k}"),
                      helper.make_node("Relu", [f"{branch}{k}"], [f"{branch}{k}r"], name=f"{branch}_relu{k}")]
            before = f"{branch}{k}r"
        nodes.append(helper.make_node("GlobalAveragePool", [before], [f"{branch}_pooled"], name=f"{branch}_pool"))
    nodes += [helper.make_node("Concat", ["a_pooled", "b_pooled"], ["both"], axis=1, name="concat"),
              helper.make_node("Flatten", ["both"], ["flat"], name="flatten"),
              helper.make_node("MatMul", ["flat", "head_w"], ["probabilities"], name="head")]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                           ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
                              weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_each_backbone_keeps_its_own_leading_convolutions_and_its_own_tail_float():
    """The second backbone's input convolution, the most sensitive one, was quantized: the float prefix was
    counted in file order and ended inside the first backbone."""
    floats = set(_float_nodes(two_backbones(), float_convs=1))
    assert {"normalize", "a_conv1", "a_relu1", "b_conv1", "b_relu1"} <= floats
    assert not floats & {"a_conv2", "a_relu2", "b_conv2", "b_relu2", "a_conv3", "b_conv3"}
    assert {"a_pool", "b_pool", "concat", "flatten", "head"} <= floats  # after each branch's last convolution
    assert {"a_conv2", "b_conv2"} <= set(_float_nodes(two_backbones(), float_convs=2))
