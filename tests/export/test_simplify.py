"""onnxslim's simplification is kept only where the graph still computes the same outputs under the same names."""

from __future__ import annotations

import numpy as np
import onnx
import onnxslim
from onnx import TensorProto, helper

from medclf.export.simplify import simplify
from medclf.runtime.modelcard import INPUT_NAME


def two_outputs(first: str, second: str, features: str = "features") -> onnx.ModelProto:
    """image → probabilities (its mean) and ``features`` (its max), outputs in the order given."""
    nodes = [helper.make_node("Cast", [INPUT_NAME], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["x"], ["probabilities"], axes=[1, 2], keepdims=0),
             helper.make_node("ReduceMax", ["x"], [features], axes=[1, 2], keepdims=0)]
    outputs = {name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3])
               for name in ("probabilities", features)}
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8,
                                                                         ["batch", 4, 4, 3])],
                              [outputs[first], outputs[second]])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


IMAGES = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), np.uint8)


def test_a_simplified_graph_computing_the_same_outputs_is_kept():
    proto, record = simplify(two_outputs("probabilities", "features"), IMAGES)
    assert record["kept"] and record["max_abs_change"] == 0.0
    assert [output.name for output in proto.graph.output] == ["probabilities", "features"]


def test_a_simplified_graph_whose_outputs_moved_is_refused_not_compared_by_position(monkeypatch):
    """Compared by position, probabilities were judged against whatever came first in the other graph."""
    original = two_outputs("probabilities", "features")
    monkeypatch.setattr(onnxslim, "slim", lambda model: two_outputs("features", "probabilities"))
    proto, record = simplify(original, IMAGES)
    assert proto is original and not record["kept"] and record["max_abs_change"] is None
    assert record["outputs_changed"] == {"before": ["probabilities", "features"],
                                         "after": ["features", "probabilities"]}


def test_a_simplified_graph_with_a_renamed_output_is_refused_though_its_values_match(monkeypatch):
    """The runtime finds outputs by name: a renamed one, equal by position and value, passed as unchanged."""
    original = two_outputs("probabilities", "features")
    monkeypatch.setattr(onnxslim, "slim", lambda model: two_outputs("probabilities", "cam", features="cam"))
    proto, record = simplify(original, IMAGES)
    assert proto is original and not record["kept"]
