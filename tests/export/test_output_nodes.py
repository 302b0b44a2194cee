"""Graph questions FP16 and INT8 ask of an exported file."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from medclf.export.output_nodes import leading_convs


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


def test_each_backbones_leading_convolutions_are_found_wherever_the_file_lists_them():
    """FP16 kept the file's first convolutions float32: with two backbones, the first one's alone."""
    assert leading_convs(two_backbones(), 1) == ["a_conv1", "b_conv1"]
    assert leading_convs(two_backbones(), 2) == ["a_conv1", "a_conv2", "b_conv1", "b_conv2"]
    assert leading_convs(two_backbones(), 0) == []
